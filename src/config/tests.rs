//! The file's sections, flags laid over them, and the checks.

use std::time::Duration;

use super::flags::{ClusterFlags, CoordinatorFlags, GatewayFlags, RoomNodeFlags};
use super::*;

fn node_id() -> partyline_proto::NodeId {
    partyline_proto::NodeId::new("n")
}

#[test]
fn file_values_apply_and_flags_win() {
    let file: FileConfig = toml::from_str(
        "[gateway]\nlisten = \"127.0.0.1:7000\"\nping_interval = \"5s\"\n[room_node]\nidle_timeout = \"2m\"\n",
    )
    .unwrap();
    let flags = GatewayFlags {
        ping_interval: Some(Duration::from_secs(3)),
        ..Default::default()
    };
    let gateway = layer(file.gateway, &flags).unwrap();
    assert_eq!(gateway.listen(), "127.0.0.1:7000".parse().unwrap());
    assert_eq!(gateway.ping_interval, Duration::from_secs(3));
    let room = layer(file.room_node, &RoomNodeFlags::default())
        .unwrap()
        .into_config(node_id(), &[])
        .unwrap();
    assert_eq!(room.idle_timeout, Duration::from_secs(120));
}

#[test]
fn unknown_keys_and_bad_values_are_errors() {
    assert!(toml::from_str::<FileConfig>("[gateway]\nlisen = \"x\"\n").is_err());
    assert!(toml::from_str::<FileConfig>("[gateway]\nping_interval = \"soon\"\n").is_err());
    assert!(toml::from_str::<FileConfig>("[nope]\n").is_err());
    let bad = GatewaySettings {
        session_queue: 0,
        ..Default::default()
    };
    assert!(bad.into_config("g").is_err());
    let no_renders = RoomNodeSettings {
        render_concurrency: 0,
        ..Default::default()
    };
    let refused = no_renders.into_config(node_id(), &[]).unwrap_err();
    assert!(
        refused.to_string().contains("--render-concurrency"),
        "{refused}"
    );
}

#[test]
fn room_modes_come_from_the_file_and_flags() {
    let file: FileConfig =
        toml::from_str("[room_node.modes]\n\"doc-\" = \"history\"\n\"cursor-\" = \"ephemeral\"\n")
            .unwrap();
    let flags = ["doc-=snapshot".to_owned(), "doc-big-=history".to_owned()];
    let config = file.room_node.into_config(node_id(), &flags).unwrap();
    use partyline_room_node::RoomMode;
    assert_eq!(config.mode_of("doc-1"), RoomMode::Snapshot, "the flag wins");
    assert_eq!(
        config.mode_of("doc-big-1"),
        RoomMode::History,
        "longest prefix"
    );
    assert_eq!(config.mode_of("cursor-1"), RoomMode::Ephemeral);
    assert_eq!(config.mode_of("other"), RoomMode::Snapshot);
    let bad = RoomNodeSettings::default().into_config(node_id(), &["doc-=forever".to_owned()]);
    assert!(bad.is_err());
}

#[test]
fn cluster_and_coordinator_sections_layer_and_check() {
    let file: FileConfig = toml::from_str(
        "[cluster]\nnats = \"nats://10.0.0.1:4222\"\n[coordinator]\ndead_after = \"5s\"\nrebalance_on_join = false\n",
    )
    .unwrap();
    let flags = ClusterFlags {
        name: Some("blue".into()),
        ..Default::default()
    };
    let cluster = layer(file.cluster, &flags).unwrap().build().unwrap();
    assert_eq!(cluster.nats_url, "nats://10.0.0.1:4222");
    assert_eq!(cluster.cluster, "blue");
    let coordinator = layer(file.coordinator, &CoordinatorFlags::default()).unwrap();
    assert_eq!(coordinator.dead_after, Duration::from_secs(5));
    assert!(!coordinator.rebalance_on_join);
    let too_fast = CoordinatorFlags {
        dead_after: Some(Duration::from_millis(500)),
        ..Default::default()
    };
    let too_fast = layer(CoordinatorConfig::default(), &too_fast).unwrap();
    assert!(
        too_fast.validate().is_err(),
        "dead_after below the heartbeat"
    );
    let bad_nats = ClusterSettings {
        nats: Some("127.0.0.1:4222 x".into()),
        ..Default::default()
    };
    assert!(bad_nats.build().is_err());
}

/// Every `[default: X]` in a flag's `--help` that is a value (not prose
/// such as "the host name") says what the settings' default is: the
/// consts are the one source, the help must not drift from them.
#[test]
fn help_defaults_match_the_settings_defaults() {
    use super::flags::*;
    use clap::Args;

    fn check<F: Args>(defaults: serde_json::Value, checked: &mut usize, wrong: &mut Vec<String>) {
        let command = F::augment_args(clap::Command::new("flags"));
        for arg in command.get_arguments() {
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let Some((_, rest)) = help.split_once("[default: ") else {
                continue;
            };
            let said = rest.split(']').next().unwrap_or_default();
            let key = arg.get_id().as_str();
            let value = match &defaults[key] {
                serde_json::Value::String(text) if !text.is_empty() => text.clone(),
                serde_json::Value::Number(number) => number.to_string(),
                serde_json::Value::Bool(flag) => flag.to_string(),
                // No value to compare with: the help describes it in words.
                _ => continue,
            };
            *checked += 1;
            let same_duration = match (
                humantime::parse_duration(said),
                humantime::parse_duration(&value),
            ) {
                (Ok(said), Ok(value)) => said == value,
                _ => false,
            };
            if said != value && !same_duration {
                wrong.push(format!(
                    "--{key}: help says {said:?}, the default is {value:?}"
                ));
            }
        }
    }

    let (mut checked, mut wrong) = (0, Vec::new());
    let mut gateway = json!(GatewaySettings::default());
    gateway["listen"] = json!(partyline_gateway::config::DEFAULT_LISTEN);
    check::<GatewayFlags>(gateway, &mut checked, &mut wrong);
    check::<RoomNodeFlags>(json!(RoomNodeSettings::default()), &mut checked, &mut wrong);
    check::<NodeFlags>(json!(NodeSettings::default()), &mut checked, &mut wrong);
    check::<AuthFlags>(json!(AuthSettings::default()), &mut checked, &mut wrong);
    check::<WebhooksFlags>(json!(HooksConfig::default()), &mut checked, &mut wrong);
    check::<TelemetryFlags>(
        json!(TelemetrySettings::default()),
        &mut checked,
        &mut wrong,
    );
    check::<CoordinatorFlags>(
        json!(CoordinatorConfig::default()),
        &mut checked,
        &mut wrong,
    );
    let cluster = partyline_coordinator::ClusterOptions::default();
    let cluster = json!({ "nats": cluster.nats_url, "name": cluster.cluster });
    check::<ClusterFlags>(cluster, &mut checked, &mut wrong);
    assert!(
        wrong.is_empty(),
        "--help and defaults disagree:\n{}",
        wrong.join("\n")
    );
    assert!(checked >= 45, "only {checked} defaults compared");
}

/// Every flag is named as its key in the file's section (what [`layer`]
/// relies on), except the few that are flags only.
#[test]
fn every_flag_is_a_file_key() {
    use super::flags::*;
    use clap::Args;

    const FLAGS_ONLY: &[&str] = &["room_mode", "insecure_no_grpc_secret"];
    fn check<F: Args>(section: impl Serialize, wrong: &mut Vec<String>) {
        let keys = json!(section);
        let command = F::augment_args(clap::Command::new("flags"));
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if keys.get(id).is_none() && !FLAGS_ONLY.contains(&id) {
                wrong.push(id.to_owned());
            }
        }
    }
    let mut wrong = Vec::new();
    check::<GatewayFlags>(GatewaySettings::default(), &mut wrong);
    check::<RoomNodeFlags>(RoomNodeSettings::default(), &mut wrong);
    check::<NodeFlags>(NodeSettings::default(), &mut wrong);
    check::<AuthFlags>(AuthSettings::default(), &mut wrong);
    check::<WebhooksFlags>(HooksConfig::default(), &mut wrong);
    check::<TelemetryFlags>(TelemetrySettings::default(), &mut wrong);
    check::<CoordinatorFlags>(CoordinatorConfig::default(), &mut wrong);
    check::<ClusterFlags>(ClusterSettings::default(), &mut wrong);
    check::<LinkFlags>(LinkSettings::default(), &mut wrong);
    assert!(wrong.is_empty(), "flags without a file key: {wrong:?}");
}
