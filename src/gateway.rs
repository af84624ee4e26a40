//! `partyline gateway`: a stateless WebSocket edge of a cluster. Follows
//! the slot map in NATS KV and routes each room to its owner; on SIGTERM
//! closes its clients with 1012 so they reconnect through another gateway.

use anyhow::Context;
use partyline_coordinator::cluster::Cluster;
use partyline_proto::close;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::flags::{AuthFlags, ClusterFlags, GatewayFlags, LinkFlags, WebhookSecretFlags};
use crate::config::{effective, host_name, layer, AuthSettings, FileConfig, LinkSettings};
use crate::ServeArgs;

/// `partyline gateway` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct GatewayArgs {
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
    #[command(flatten)]
    cluster: ClusterFlags,
    #[command(flatten)]
    gateway: GatewayFlags,
    #[command(flatten)]
    auth: AuthFlags,
    #[command(flatten)]
    link: LinkFlags,
    #[command(flatten)]
    signing: WebhookSecretFlags,
    /// Let any client open and edit any room, without a token.
    #[arg(long, env = "PARTYLINE_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
}

/// What `run` starts from, built from the settings alone (no I/O).
struct Prepared {
    listen: std::net::SocketAddr,
    cluster: partyline_coordinator::ClusterOptions,
    gateway: partyline_gateway::GatewayConfig,
    auth: AuthSettings,
    link: LinkSettings,
    /// Signs the auth webhook's requests (`[webhooks] secret`).
    signer: Option<partyline_proto::webhook::WebhookSigner>,
}

fn prepare(args: &GatewayArgs, file: FileConfig) -> anyhow::Result<Prepared> {
    let gateway = layer(file.gateway, &args.gateway)?;
    let listen = gateway.listen();
    let cluster = layer(file.cluster, &args.cluster)?.build()?;
    let mut config = gateway.into_config(format!("{}-{}", host_name(), std::process::id()))?;
    config.shutdown_close_code = close::SERVICE_RESTART;
    let auth = layer(file.auth, &args.auth)?;
    crate::config::check_auth(&auth, args.insecure_no_auth)?;
    config.max_session = auth.max_session;
    let link = file.link.layered(&args.link)?;
    link.check()?;
    let signer = layer(file.webhooks, &args.signing)?.signer()?;
    Ok(Prepared {
        listen,
        cluster,
        gateway: config,
        auth,
        link,
        signer,
    })
}

/// `--print-effective-config`'s sections.
pub(crate) fn effective(
    args: &GatewayArgs,
    file: FileConfig,
) -> anyhow::Result<Vec<(&'static str, serde_json::Value)>> {
    let prepared = prepare(args, file)?;
    let mut gateway = effective::gateway(&prepared.gateway);
    // The id ends in this process's id; printed as a placeholder.
    let pid = format!("-{}", std::process::id());
    if let Some(host) = prepared.gateway.gateway_id.strip_suffix(&pid) {
        gateway["gateway_id"] = format!("{host}-{{pid}}").into();
    }
    let mut auth = crate::config::effective_auth(&prepared.auth);
    auth["insecure_no_auth"] = args.insecure_no_auth.into();
    Ok(vec![
        ("listen", serde_json::json!(prepared.listen)),
        ("gateway", gateway),
        ("auth", auth),
        ("cluster", effective::cluster(&prepared.cluster)),
        ("link", prepared.link.effective()?),
        (
            "webhooks",
            serde_json::json!({ "secret": prepared.signer.as_ref().map(|_| "<redacted>") }),
        ),
    ])
}

/// Runs until SIGTERM/SIGINT.
pub(crate) async fn run(
    args: GatewayArgs,
    file: FileConfig,
    serving: crate::telemetry::Serving,
) -> anyhow::Result<()> {
    let insecure_no_auth = args.insecure_no_auth;
    let Prepared {
        listen,
        cluster: cluster_options,
        gateway: mut config,
        auth,
        link,
        signer,
    } = prepare(&args, file)?;
    config.auth = crate::config::authorizer(&auth, insecure_no_auth, signer).await?;
    if config.allowed_origins.is_none() {
        tracing::warn!(
            "no --allowed-origins: pages of any web origin may open sockets and call the API \
             with a user's credentials; list your app's origins"
        );
    }
    config.trace_frames = serving.traces;

    let shutdown = CancellationToken::new();
    let link = link.build(shutdown.clone()).await?;
    let cluster = Cluster::connect(&cluster_options)
        .await
        .context("connect to NATS")?;
    let slot_map = cluster.watch_slot_map(shutdown.clone()).await?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind gateway on {listen}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(crate::wait_for_signal(shutdown.clone()));
    let ready = {
        let map = slot_map.clone();
        crate::ops::readiness(move || {
            let has_map = map.borrow().is_some();
            async move {
                has_map
                    .then_some(())
                    .ok_or_else(|| "no slot map yet".to_owned())
            }
        })
    };
    serving.start_ops(ready, shutdown.clone()).await?;
    tracing::info!(%addr, epoch = slot_map.borrow().as_ref().map(|m| m.epoch()), "gateway started");
    // Tests and scripts wait for this exact line on stdout.
    println!("partyline gateway listening on ws://{addr}");
    partyline_gateway::run(listener, config, slot_map, link, shutdown)
        .await
        .context("gateway")?;
    tracing::info!("stopped");
    Ok(())
}
