//! The deployment files, checked offline (no Docker engine, no Kubernetes
//! cluster here): `docker-compose config` of docker-compose.yml, `kubectl
//! kustomize` of each overlay with the output validated against the
//! Kubernetes schemas (`kubernetes-validate --strict`), the Dockerfile
//! linted by hadolint, the GitHub workflows by actionlint, and the
//! properties the docs promise read back from the rendered files.
//! (tests/it/compose.rs runs the compose topology.)

use std::path::PathBuf;
use std::process::Command;

use crate::common;

/// The checkout under test, read at run time: the compile-time value names
/// whichever clone last built the shared target directory.
fn root() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

/// Runs `program args` in the repository; its stdout, or a panic with
/// everything it said.
fn run(program: &str, args: &[&str]) -> String {
    run_with(program, args, &[])
}

/// [`run`] with `env` added to the environment.
fn run_with(program: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let output = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("{program} not runnable ({e}); scripts/test.sh installs it"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("utf-8 output")
}

/// The YAML documents of `text`, as JSON (through the Python that
/// docker-compose brings along).
fn documents(text: &str) -> Vec<serde_json::Value> {
    use std::io::Write;
    let mut python = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(sys.stdin) if d]))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    python
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = python.wait_with_output().unwrap();
    assert!(output.status.success());
    serde_json::from_slice(&output.stdout).unwrap()
}

fn find<'a>(docs: &'a [serde_json::Value], kind: &str, name: &str) -> &'a serde_json::Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

/// The variables docker-compose.yml takes the NATS passwords from (`.env`,
/// written by deploy/compose/secrets.sh).
const COMPOSE_NATS_PASSWORDS: [&str; 4] = [
    "NATS_COORDINATOR_PASSWORD",
    "NATS_ROOM_NODE_PASSWORD",
    "NATS_GATEWAY_PASSWORD",
    "NATS_ADMIN_PASSWORD",
];

#[test]
fn docker_compose_config_validates() {
    let env: Vec<(&str, &str)> = COMPOSE_NATS_PASSWORDS
        .iter()
        .map(|var| (*var, "deploy-test-password"))
        .collect();
    run_with(
        "docker-compose",
        &["-f", "docker-compose.yml", "config", "-q"],
        &env,
    );
    let profiles = run_with(
        "docker-compose",
        &["-f", "docker-compose.yml", "config", "--profiles"],
        &env,
    );
    for profile in ["observability", "admin"] {
        assert!(profiles.lines().any(|p| p == profile), "{profiles}");
    }
    // No password is written in the file: without the variables (and
    // without a .env) it does not render, and says what is missing.
    let empty = tempfile::tempdir().unwrap();
    let file = root().join("docker-compose.yml");
    let mut command = Command::new("docker-compose");
    command
        .args(["-f", file.to_str().unwrap(), "--project-directory"])
        .arg(empty.path())
        .args(["config", "-q"]);
    for var in COMPOSE_NATS_PASSWORDS {
        command.env_remove(var);
    }
    let refused = command.output().unwrap();
    assert!(
        !refused.status.success(),
        "docker-compose.yml renders without NATS passwords"
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("deploy/compose/secrets.sh"), "{said}");
    let text = std::fs::read_to_string(&file).unwrap();
    for line in text.lines().filter(|l| l.contains("PASSWORD")) {
        let line = line.trim();
        assert!(
            line.starts_with('#')
                || COMPOSE_NATS_PASSWORDS
                    .iter()
                    .any(|var| line.contains(&format!("${{{var}:?"))),
            "a password that is not a required variable: {line}"
        );
    }
}

/// deploy/compose/secrets.sh writes every variable the file needs and the
/// gRPC secret file, random and URL-safe, and keeps them on a second run.
#[test]
fn the_compose_secrets_script_writes_what_the_file_needs() {
    let dir = tempfile::tempdir().unwrap();
    let script_dir = dir.path().join("deploy/compose");
    std::fs::create_dir_all(&script_dir).unwrap();
    std::fs::copy(
        root().join("deploy/compose/secrets.sh"),
        script_dir.join("secrets.sh"),
    )
    .unwrap();
    let script = script_dir.join("secrets.sh");
    let run_script = || {
        let status = Command::new("/bin/sh").arg(&script).status().unwrap();
        assert!(status.success());
        (
            std::fs::read_to_string(dir.path().join(".env")).unwrap(),
            std::fs::read_to_string(script_dir.join("grpc-secret")).unwrap(),
        )
    };
    let (env, secret) = run_script();
    for var in COMPOSE_NATS_PASSWORDS {
        let value = env
            .lines()
            .find_map(|line| line.strip_prefix(&format!("{var}=")))
            .unwrap_or_else(|| panic!("no {var} in {env}"));
        assert!(
            value.len() >= 32 && value.bytes().all(|b| b.is_ascii_hexdigit()),
            "{var}={value}"
        );
    }
    let secret_line = secret.lines().next().unwrap();
    assert!(secret_line.len() >= 32, "{secret}");
    assert_eq!(
        run_script(),
        (env, secret),
        "a second run changed the secrets"
    );
    let ignored = std::fs::read_to_string(root().join("deploy/compose/.gitignore")).unwrap();
    assert!(ignored.lines().any(|l| l == "grpc-secret"), "{ignored}");
}

#[test]
fn kustomize_overlays_render_and_validate_against_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().unwrap();
    for overlay in ["dev", "prod"] {
        let rendered = run(
            "kubectl",
            &["kustomize", &format!("deploy/k8s/overlays/{overlay}")],
        );
        let file = dir.path().join(format!("{overlay}.yaml"));
        std::fs::write(&file, &rendered).unwrap();
        run(
            "kubernetes-validate",
            &["--strict", "--quiet", file.to_str().unwrap()],
        );
        let docs = documents(&rendered);

        let gateway = find(&docs, "Deployment", "gateway");
        let container = &gateway["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        find(&docs, "Service", "gateway");
        find(&docs, "HorizontalPodAutoscaler", "gateway");
        find(&docs, "PodDisruptionBudget", "gateway");

        let nodes = find(&docs, "StatefulSet", "room-node");
        let pod = &nodes["spec"]["template"]["spec"];
        // SIGTERM drains a room node by itself; a drain mark needs the admin
        // NATS user, which room nodes do not have.
        let pre_stop = pod["containers"][0]["lifecycle"]["preStop"].to_string();
        assert!(!pre_stop.contains("admin drain"), "{pre_stop}");
        // Long enough for the drain (30 s by default) to hand every room off.
        assert!(pod["terminationGracePeriodSeconds"].as_u64().unwrap() > 30);
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);

        let coordinators = find(&docs, "Deployment", "coordinator");
        assert_eq!(coordinators["spec"]["replicas"], 2);
        let policy = find(&docs, "NetworkPolicy", "room-node-grpc");
        assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["port"], 7001);
        let monitor = find(&docs, "ServiceMonitor", "partyline");
        assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
        let config = find(&docs, "ConfigMap", "partyline");
        assert_eq!(
            config["data"]["PARTYLINE_TELEMETRY_OPS_LISTEN"],
            "0.0.0.0:9464"
        );
        internal_planes(&docs, overlay);
        if overlay == "dev" {
            // The dev overlay brings Redis and an S3-compatible store (NATS
            // comes with both overlays), all on emptyDir.
            for name in ["redis", "s3"] {
                find(&docs, "Deployment", name);
                find(&docs, "Service", name);
            }
            let nats = find(&docs, "StatefulSet", "nats");
            assert!(nats["spec"]["volumeClaimTemplates"].is_null());
            find(&docs, "Secret", "partyline");
            dev_s3_makes_the_store_bucket(&docs, config);
            // Dev values for every secret the pods reference.
            let nats = find(&docs, "Secret", "partyline-nats");
            for var in nats_config_variables() {
                assert!(
                    nats["data"][&var].is_string(),
                    "partyline-nats has no {var}"
                );
            }
            let grpc = find(&docs, "Secret", "partyline-grpc");
            assert!(grpc["data"]["grpc-secret"].is_string(), "{grpc}");
        } else {
            assert_eq!(nodes["spec"]["replicas"], 5);
            // JetStream (the slot map) on a PersistentVolume.
            let nats = find(&docs, "StatefulSet", "nats");
            assert_eq!(
                nats["spec"]["volumeClaimTemplates"][0]["metadata"]["name"],
                "data"
            );
        }
    }
}

/// The `$VARIABLES` deploy/nats/nats-server.conf reads (the passwords).
fn nats_config_variables() -> Vec<String> {
    let config = std::fs::read_to_string(root().join("deploy/nats/nats-server.conf")).unwrap();
    let mut vars: Vec<String> = config
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'))
        .filter_map(|line| line.split_once("password: $"))
        .map(|(_, var)| var.trim().to_owned())
        .collect();
    vars.sort();
    assert_eq!(
        vars,
        [
            "NATS_ADMIN_PASSWORD",
            "NATS_COORDINATOR_PASSWORD",
            "NATS_GATEWAY_PASSWORD",
            "NATS_ROOM_NODE_PASSWORD"
        ]
    );
    vars
}

/// The internal planes in a rendered overlay: NATS runs the repository's
/// deploy/nats/nats-server.conf from a ConfigMap with its passwords from
/// the Secret `partyline-nats`; every role's NATS URL is its own user with
/// its own password (one key of `partyline-nats`, expanded in the
/// environment by the kubelet), and nothing in the base is a literal
/// credential; gateways and room nodes mount the gRPC secret from the
/// Secret `partyline-grpc` (no subPath, so rotations reach them) and point
/// PARTYLINE_GRPC_SECRET_FILE at it.
fn internal_planes(docs: &[serde_json::Value], overlay: &str) {
    let nats = find(docs, "StatefulSet", "nats");
    let pod = &nats["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let config_path = args[args.iter().position(|a| *a == "-c").expect("nats -c") + 1];
    let (dir, file) = config_path.rsplit_once('/').unwrap();
    let (_, volume) = mounted_at(pod, dir).unwrap_or_else(|| panic!("{overlay}: nothing at {dir}"));
    let config_map = volume["configMap"]["name"].as_str().expect("a ConfigMap");
    let shipped = std::fs::read_to_string(root().join("deploy/nats/nats-server.conf")).unwrap();
    assert_eq!(
        find(docs, "ConfigMap", config_map)["data"][file],
        shipped,
        "{overlay}: NATS runs deploy/nats/nats-server.conf"
    );
    assert_eq!(
        container["envFrom"],
        serde_json::json!([{"secretRef": {"name": "partyline-nats"}}]),
        "{overlay}: NATS gets its passwords from the Secret"
    );
    nats_config_variables();
    let policy = find(docs, "NetworkPolicy", "nats");
    assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["port"], 4222);
    assert_eq!(
        policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
            ["app.kubernetes.io/part-of"],
        "partyline"
    );

    let containers = [
        ("Deployment", "coordinator", "coordinator"),
        ("StatefulSet", "room-node", "room-node"),
        ("Deployment", "gateway", "gateway"),
    ];
    for (kind, name, user) in containers {
        let pod = &find(docs, kind, name)["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let env = container["env"].as_array().unwrap();
        let var = |wanted: &str| {
            env.iter()
                .find(|e| e["name"] == wanted)
                .unwrap_or_else(|| panic!("{overlay}: {name} has no {wanted}"))
        };
        let password = format!("NATS_{}_PASSWORD", user.to_uppercase().replace('-', "_"));
        assert_eq!(
            var("NATS_PASSWORD")["valueFrom"],
            serde_json::json!({"secretKeyRef": {"name": "partyline-nats", "key": password}}),
            "{overlay}: {name}"
        );
        assert_eq!(
            var("PARTYLINE_CLUSTER_NATS")["value"],
            format!("nats://{user}:$(NATS_PASSWORD)@$(NATS_ADDRESS)"),
            "{overlay}: {name} connects as {user}"
        );
        // Every NATS password is a key of its own: a pod gets only its role's.
        assert!(
            !container["envFrom"].to_string().contains("partyline-nats"),
            "{overlay}: {name} gets every NATS password"
        );
        let grpc_file = env
            .iter()
            .find(|e| e["name"] == "PARTYLINE_GRPC_SECRET_FILE")
            .map(|e| e["value"].as_str().unwrap().to_owned());
        let grpc_file = grpc_file.unwrap_or_else(|| panic!("{overlay}: {name} has no gRPC secret"));
        let (dir, key) = grpc_file.rsplit_once('/').unwrap();
        let (mount, volume) =
            mounted_at(pod, dir).unwrap_or_else(|| panic!("{overlay}: {name}: nothing at {dir}"));
        assert!(
            mount["subPath"].is_null(),
            "{overlay}: {name}: a subPath mount is never updated"
        );
        assert_eq!(
            volume["secret"]["secretName"], "partyline-grpc",
            "{overlay}: {name}"
        );
        assert_eq!(key, "grpc-secret");
    }
    // NATS_ADDRESS comes from the ConfigMap, and no credential-less URL does.
    let config = find(docs, "ConfigMap", "partyline");
    assert!(config["data"]["NATS_ADDRESS"].is_string());
    assert!(config["data"]["PARTYLINE_CLUSTER_NATS"].is_null());
}

/// The first container's mount at `dir` in `pod` and the pod's volume it
/// mounts.
fn mounted_at<'a>(
    pod: &'a serde_json::Value,
    dir: &str,
) -> Option<(&'a serde_json::Value, &'a serde_json::Value)> {
    let mount = pod["containers"][0]["volumeMounts"]
        .as_array()?
        .iter()
        .find(|m| m["mountPath"] == dir)?;
    let volume = pod["volumes"]
        .as_array()?
        .iter()
        .find(|v| v["name"] == mount["name"])?;
    Some((mount, volume))
}

/// The base has no Secret and no credential written out: every env value
/// that is a URL with a user in it takes its password from a variable.
#[test]
fn the_kubernetes_base_holds_no_literal_credentials() {
    let rendered = run("kubectl", &["kustomize", "deploy/k8s/base"]);
    let docs = documents(&rendered);
    assert!(docs.iter().all(|d| d["kind"] != "Secret"));
    for doc in &docs {
        let text = doc.to_string();
        for (at, _) in text.match_indices("://") {
            let rest = &text[at + 3..];
            let authority = rest.split(['/', '"', ' ']).next().unwrap_or_default();
            if let Some((userinfo, _)) = authority.rsplit_once('@') {
                let password = userinfo.split_once(':').map_or("", |(_, p)| p);
                assert!(
                    password.starts_with("$(") && password.ends_with(')'),
                    "a literal credential in {}: {authority}",
                    doc["metadata"]["name"]
                );
            }
        }
    }
}

/// The dev overlay's S3 API: versitygw pinned to a release, serving the
/// emptyDir `/data` with the posix backend (every directory a bucket); an
/// init container makes the bucket of `PARTYLINE_NODE_STORE` before it
/// starts; `AWS_ENDPOINT` is its Service and its keys are the Secret's.
fn dev_s3_makes_the_store_bucket(docs: &[serde_json::Value], config: &serde_json::Value) {
    let pod = &find(docs, "Deployment", "s3")["spec"]["template"]["spec"];
    let init = &pod["initContainers"][0];
    let gateway = &pod["containers"][0];
    for container in [init, gateway] {
        common::assert_pinned_versitygw(container["image"].as_str().unwrap_or_default());
    }
    let args: Vec<&str> = gateway["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[args.len() - 2..], ["posix", "/data"], "{args:?}");
    let flag = |name: &str| args[args.iter().position(|a| *a == name).unwrap() + 1];
    assert_eq!(
        gateway["readinessProbe"]["httpGet"]["path"],
        flag("--health")
    );
    let port = flag("--port").strip_prefix(':').unwrap();
    assert_eq!(gateway["ports"][0]["containerPort"].to_string(), port);
    let data = |container: &serde_json::Value| container["volumeMounts"][0]["mountPath"].clone();
    assert_eq!(
        (data(init), data(gateway)),
        ("/data".into(), "/data".into())
    );

    let store = config["data"]["PARTYLINE_NODE_STORE"].as_str().unwrap();
    let bucket = store
        .strip_prefix("s3://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_else(|| panic!("{store}"));
    assert_eq!(
        init["command"],
        serde_json::json!(["mkdir", "-p", format!("/data/{bucket}")])
    );
    assert_eq!(config["data"]["AWS_ENDPOINT"], format!("http://s3:{port}"));
    let service = find(docs, "Service", "s3");
    assert_eq!(service["spec"]["ports"][0]["port"].to_string(), port);
    let keys: Vec<String> = gateway["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            format!(
                "{}={}",
                e["name"].as_str().unwrap(),
                e["valueFrom"]["secretKeyRef"]["key"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            "ROOT_ACCESS_KEY_ID=AWS_ACCESS_KEY_ID",
            "ROOT_SECRET_ACCESS_KEY=AWS_SECRET_ACCESS_KEY"
        ]
    );
}

#[test]
fn the_dockerfile_passes_hadolint_and_runs_as_non_root() {
    run("hadolint", &["deploy/Dockerfile"]);
    let dockerfile = std::fs::read_to_string(root().join("deploy/Dockerfile")).unwrap();
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|line| line.starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "multi-stage: {stages:?}");
    assert!(dockerfile.contains("cargo build --release --locked"));
    let runtime = dockerfile
        .split("AS runtime")
        .nth(1)
        .expect("runtime stage");
    let user = runtime
        .lines()
        .find_map(|line| line.strip_prefix("USER "))
        .expect("USER in the runtime stage");
    assert!(
        !user.starts_with("root") && !user.starts_with('0'),
        "{user}"
    );
    assert!(runtime.contains("COPY --from=build"));
}

/// The GitHub workflows (.github/workflows: CI and the release) cannot run
/// here, so they are checked offline: actionlint (syntax, expressions and
/// their types, job dependencies, runner labels, script injection; and
/// shellcheck on every `run:` script when shellcheck is on PATH), and every
/// action they use pinned to a full commit SHA, as docs/release.md says.
#[test]
fn github_workflows_pass_actionlint() {
    let mut workflows: Vec<String> = std::fs::read_dir(root().join(".github/workflows"))
        .expect(".github/workflows")
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .filter(|name| name.ends_with(".yml") || name.ends_with(".yaml"))
        .map(|name| format!(".github/workflows/{name}"))
        .collect();
    workflows.sort();
    for expected in [".github/workflows/ci.yml", ".github/workflows/release.yml"] {
        assert!(workflows.iter().any(|w| w == expected), "{workflows:?}");
    }
    let mut args = vec!["-no-color"];
    args.extend(workflows.iter().map(String::as_str));
    run("actionlint", &args);

    for workflow in &workflows {
        let text = std::fs::read_to_string(root().join(workflow)).unwrap();
        for line in text.lines() {
            let line = line.trim_start();
            let Some(action) = line
                .strip_prefix("- uses:")
                .or_else(|| line.strip_prefix("uses:"))
            else {
                continue;
            };
            let reference = action.split_whitespace().next().unwrap_or_default();
            // Actions of this repository are pinned by the commit itself.
            if reference.starts_with("./") {
                continue;
            }
            let sha = reference.split_once('@').map(|(_, r)| r).unwrap_or("");
            assert!(
                sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
                "{workflow}: `{reference}` is not pinned to a full commit SHA"
            );
        }
    }
}
