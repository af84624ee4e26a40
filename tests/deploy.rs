//! The deployment files, checked offline (no Docker engine, no Kubernetes
//! cluster here): `docker-compose config` of docker-compose.yml, `kubectl
//! kustomize` of each overlay with the output validated against the
//! Kubernetes schemas (`kubernetes-validate --strict`), the Dockerfile
//! linted by hadolint, the GitHub workflows by actionlint, and the
//! properties the docs promise read back from the rendered files.
//! (tests/compose.rs runs the compose topology.)

mod common;

use std::path::PathBuf;
use std::process::Command;

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
    let output = Command::new(program)
        .args(args)
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

#[test]
fn docker_compose_config_validates() {
    run(
        "docker-compose",
        &["-f", "docker-compose.yml", "config", "-q"],
    );
    let profiles = run(
        "docker-compose",
        &["-f", "docker-compose.yml", "config", "--profiles"],
    );
    assert!(profiles.lines().any(|p| p == "observability"), "{profiles}");
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
        let pre_stop = pod["containers"][0]["lifecycle"]["preStop"].to_string();
        assert!(pre_stop.contains("admin drain"), "{pre_stop}");
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
        if overlay == "dev" {
            // The dev overlay brings NATS, Redis and an S3-compatible store.
            for name in ["nats", "redis", "s3"] {
                find(&docs, "Deployment", name);
                find(&docs, "Service", name);
            }
            find(&docs, "Secret", "partyline");
            dev_s3_makes_the_store_bucket(&docs, config);
        } else {
            assert_eq!(nodes["spec"]["replicas"], 5);
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
