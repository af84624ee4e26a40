//! `--print-effective-config`: a serving role's settings after file ← env
//! ← flags and every default, as sorted JSON with secrets redacted. Read
//! from the typed configs the roles are handed, so it shows what would
//! run; tests/it/effective_config.rs compares it with committed files. Never
//! connects anywhere.

use std::time::Duration;

use serde_json::{json, Map, Value};

/// What a secret (or a URL's credentials) is printed as.
pub(crate) const REDACTED: &str = "<redacted>";

/// A duration as the config file writes it (`"30s"`).
pub(crate) fn duration(value: Duration) -> Value {
    json!(humantime::format_duration(value).to_string())
}

/// An optional duration; `null` when unset.
pub(crate) fn opt_duration(value: Option<Duration>) -> Value {
    value.map_or(Value::Null, duration)
}

/// A secret: only whether it is set.
pub(crate) fn secret(value: Option<&str>) -> Value {
    value.map_or(Value::Null, |_| json!(REDACTED))
}

/// URL(s), comma-separated, with any credentials (`user:password@`) redacted.
pub(crate) fn without_credentials(urls: &str) -> String {
    urls.split(',')
        .map(|entry| {
            let redacted = entry.split_once("://").and_then(|(scheme, rest)| {
                let (_, host) = rest.rsplit_once('@')?;
                Some(format!("{scheme}://{REDACTED}@{host}"))
            });
            redacted.unwrap_or_else(|| entry.to_owned())
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The gateway's settings (its authorizer is printed as `auth`).
pub(crate) fn gateway(config: &partyline_gateway::GatewayConfig) -> Value {
    json!({
        "gateway_id": config.gateway_id,
        "max_message_bytes": config.max_message_bytes,
        "batch_timeout": duration(config.batch_timeout),
        "max_query_bytes": config.max_query_bytes,
        "ping_interval": duration(config.ping_interval),
        "dead_after": duration(config.dead_after),
        "session_queue": config.session_queue,
        "session_queue_bytes": config.session_queue_bytes,
        "upstream_linger": duration(config.upstream_linger),
        "owner_unreachable_timeout": duration(config.owner_unreachable_timeout),
        "room_reopen_attempts": config.room_reopen_attempts,
        "ws_read_buffer_bytes": config.ws_read_buffer_bytes,
        "max_connections": config.max_connections,
        "release_grace": duration(config.release_grace),
        "max_session": opt_duration(config.max_session),
        "limits": {
            "max_connects_per_ip": config.limits.max_connects_per_ip,
            "max_sockets_per_ip": config.limits.max_sockets_per_ip,
            "max_messages_per_second": config.limits.max_messages_per_second,
            "message_burst": config.limits.message_burst,
        },
        "api_key": secret(config.api_key.as_deref()),
        "api_timeout": duration(config.api_timeout),
        "trusted_proxies": config.trusted_proxies.iter().map(|net| net.to_string()).collect::<Vec<_>>(),
        "allowed_origins": config.allowed_origins.as_ref().map(|allowed| allowed.entries()),
        "shutdown_close_code": config.shutdown_close_code,
    })
}

/// The room node's settings (its remote storage and hooks are printed
/// beside it: `remote`, `webhooks`).
pub(crate) fn room_node(config: &partyline_room_node::RoomNodeConfig, hooks: bool) -> Value {
    let modes: Vec<Value> = config
        .modes
        .iter()
        .map(|(prefix, mode)| json!([prefix, mode.as_str()]))
        .collect();
    let policies: Vec<Value> = config
        .policies
        .iter()
        .map(|(prefix, policy)| {
            json!([prefix, {
                "max_sessions": policy.max_sessions,
                "max_doc_bytes": policy.max_doc_bytes,
                "awareness_throttle": opt_duration(policy.awareness_throttle),
                "max_frame_bytes": policy.max_frame_bytes,
                "idle_timeout": opt_duration(policy.idle_timeout),
                "read_only_custom_messages": policy.read_only_custom_messages,
                "gc": !policy.keep_deleted,
            }])
        })
        .collect();
    json!({
        "node_id": config.node_id.as_str(),
        "data_dir": config.data_dir,
        "idle_timeout": duration(config.idle_timeout),
        "snapshot_interval": duration(config.snapshot_interval),
        "snapshot_log_bytes": config.snapshot_log_bytes,
        "snapshot_log_updates": config.snapshot_log_updates,
        "log_buffer_bytes": config.log_buffer_bytes,
        "snapshots_kept": config.snapshots_kept,
        "modes": modes,
        "policies": policies,
        "refuse_unlisted_rooms": config.refuse_unlisted_rooms,
        "history_versions": config.history_versions,
        "history_max_age": opt_duration(config.history_max_age),
        "delete_retention": duration(config.delete_retention),
        "fsync_interval": duration(config.fsync_interval),
        "link_queue": config.link_queue,
        "room_queue": config.room_queue,
        "room_locks": config.room_locks,
        "room_lock_timeout": duration(config.room_lock_timeout),
        "hooks": hooks,
        "limits": {
            "max_type_depth": config.limits.max_type_depth,
            "awareness_max_clients": config.limits.awareness_max_clients,
            "awareness_max_bytes": config.limits.awareness_max_bytes,
        },
        "memory_trim_delay": opt_duration(config.memory_trim_delay),
        "max_doc_bytes": config.max_doc_bytes,
        "max_render_bytes": config.max_render_bytes,
        "render_concurrency": config.render_concurrency,
        "min_resync_interval": duration(config.min_resync_interval),
    })
}

/// The webhooks' settings, defaults filled in.
pub(crate) fn webhooks(config: &partyline_room_node::hooks::HooksConfig) -> Value {
    let mut value = json!(config);
    value["callback_secret"] = secret(config.callback_secret.as_deref());
    value["secret"] = secret(config.secret.as_deref());
    value["callback_headers"] = json!(config
        .callback_headers
        .iter()
        .map(|line| match line.split_once(':') {
            Some((name, _)) => format!("{name}: <redacted>"),
            None => "<redacted>".to_owned(),
        })
        .collect::<Vec<_>>());
    value
}

/// The coordinator's settings; a generated id (random) prints as `{generated}`.
pub(crate) fn coordinator(
    config: &partyline_coordinator::CoordinatorConfig,
    id_given: bool,
) -> Value {
    let mut value = json!(config);
    if !id_given {
        value["id"] = json!("{generated}");
    }
    value
}

/// Where the cluster's NATS is.
pub(crate) fn cluster(options: &partyline_coordinator::ClusterOptions) -> Value {
    json!({
        "nats": without_credentials(&options.nats_url),
        "name": options.cluster,
    })
}

/// Prints `sections` as one sorted, pretty JSON object on stdout.
pub(crate) fn print(sections: Vec<(&'static str, Value)>) -> anyhow::Result<()> {
    let object: Map<String, Value> = sections
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
    println!("{}", serde_json::to_string_pretty(&Value::Object(object))?);
    Ok(())
}
