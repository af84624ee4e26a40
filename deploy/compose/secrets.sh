#!/bin/sh
# Makes the secrets docker-compose.yml reads, once, from the OS's random
# source (never overwrites what exists):
#   .env                          NATS_{COORDINATOR,ROOM_NODE,GATEWAY,ADMIN}_PASSWORD
#                                 (one NATS user per role: deploy/nats/nats-server.conf)
#   deploy/compose/grpc-secret    the gRPC link's shared secret (one line)
# Both stay out of git. Run from anywhere:  deploy/compose/secrets.sh
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)

# 24 random bytes as hex: URL-safe, so it goes into nats://USER:PASSWORD@host as is.
random() { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; }

env_file="$root/.env"
touch "$env_file"
chmod 600 "$env_file"
for var in NATS_COORDINATOR_PASSWORD NATS_ROOM_NODE_PASSWORD NATS_GATEWAY_PASSWORD NATS_ADMIN_PASSWORD; do
    if ! grep -q "^$var=" "$env_file"; then
        echo "$var=$(random)" >>"$env_file"
        echo "wrote $var to .env"
    fi
done

secret="$root/deploy/compose/grpc-secret"
if [ ! -s "$secret" ]; then
    # Readable by the containers' user (10001): compose bind-mounts the file as is.
    (umask 022 && random >"$secret" && echo >>"$secret")
    echo "wrote deploy/compose/grpc-secret"
fi
