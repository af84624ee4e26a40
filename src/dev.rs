//! `partyline dev`: one process running a gateway and a room node with a
//! static one-node slot map. The gateway reaches the room node over real
//! gRPC on a loopback port, the same path a cluster uses.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use partyline_proto::link::{LinkAuth, LinkSecret};
use partyline_proto::{NodeId, NodeInfo, SlotMap};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::flags::{AuthFlags, GatewayFlags, RoomNodeFlags, WebhooksFlags};
use crate::config::{effective, layer, AuthSettings, FileConfig, GatewaySettings};
use crate::ServeArgs;

/// `partyline dev` flags.
#[derive(Debug, clap::Args)]
pub(crate) struct DevArgs {
    /// Port to listen on, on loopback (both 127.0.0.1 and ::1, so
    /// `localhost` works whichever a client resolves), as `partykit dev`
    /// does; `--listen` names an exact address instead [default: 1999].
    #[arg(long, env = "PORT")]
    port: Option<String>,
    /// Address to listen on with `--port` / `PORT` instead of loopback
    /// (an IP address, or `localhost`) [default: loopback].
    #[arg(long, env = "HOST")]
    host: Option<String>,
    #[command(flatten)]
    pub(crate) serve: ServeArgs,
    #[command(flatten)]
    gateway: GatewayFlags,
    #[command(flatten)]
    room_node: RoomNodeFlags,
    #[command(flatten)]
    auth: AuthFlags,
    #[command(flatten)]
    webhooks: WebhooksFlags,
}

/// What `run` starts from, built from the settings alone (no I/O).
struct Prepared {
    addresses: Vec<SocketAddr>,
    room: partyline_room_node::RoomNodeConfig,
    hooks: partyline_room_node::hooks::HooksConfig,
    /// The webhooks' client, built from `hooks`.
    live_hooks: Option<partyline_room_node::hooks::Hooks>,
    gateway: partyline_gateway::GatewayConfig,
    auth: AuthSettings,
}

fn prepare(args: &DevArgs, file: FileConfig) -> anyhow::Result<Prepared> {
    let gateway = layer(file.gateway, &args.gateway)?;
    let room_node = layer(file.room_node, &args.room_node)?;
    let addresses = listen_addresses(&gateway, args.host.as_deref(), args.port.as_deref())?;
    let room = room_node.into_config(NodeId::new("dev"), &args.room_node.room_mode)?;
    let hooks = layer(file.webhooks, &args.webhooks)?;
    let live_hooks = crate::config::hooks(&hooks)?;
    let mut gateway_config = gateway.into_config("dev")?;
    let auth = layer(file.auth, &args.auth)?;
    crate::config::check_auth(&auth, true)?;
    gateway_config.max_session = auth.max_session;
    Ok(Prepared {
        addresses,
        room,
        hooks,
        live_hooks,
        gateway: gateway_config,
        auth,
    })
}

/// `--print-effective-config`'s sections.
pub(crate) fn effective(
    args: &DevArgs,
    file: FileConfig,
) -> anyhow::Result<Vec<(&'static str, serde_json::Value)>> {
    let prepared = prepare(args, file)?;
    Ok(vec![
        ("listen", serde_json::json!(prepared.addresses)),
        ("gateway", effective::gateway(&prepared.gateway)),
        ("auth", crate::config::effective_auth(&prepared.auth)),
        (
            "room_node",
            effective::room_node(&prepared.room, prepared.live_hooks.is_some()),
        ),
        ("webhooks", effective::webhooks(&prepared.hooks)),
    ])
}

/// Runs until SIGINT/SIGTERM/SIGHUP, then shuts down gracefully: client sockets
/// closed with 1001, every dirty room snapshotted.
pub(crate) async fn run(
    args: DevArgs,
    file: FileConfig,
    serving: crate::telemetry::Serving,
) -> anyhow::Result<()> {
    let Prepared {
        addresses,
        room: room_config,
        live_hooks,
        gateway: mut gateway_config,
        auth,
        hooks,
        ..
    } = prepare(&args, file)?;
    let node_id = room_config.node_id.clone();
    let first_run = !room_config.data_dir.exists();
    let _data_dir_lock = partyline_room_node::storage::DataDirLock::acquire(&room_config.data_dir)?;
    if first_run {
        // Room data is nobody's source code: keep it out of the app's repo.
        let ignore = room_config.data_dir.join(".gitignore");
        std::fs::write(&ignore, "*\n").with_context(|| format!("write {}", ignore.display()))?;
    }
    let data_dir = std::fs::canonicalize(&room_config.data_dir)
        .unwrap_or_else(|_| room_config.data_dir.clone());
    gateway_config.auth = crate::config::authorizer(&auth, true, hooks.signer()?).await?;
    let auth_mode = auth.mode.clone().unwrap_or_else(|| "none".to_owned());
    gateway_config.trace_frames = serving.traces;

    let grpc_listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind room node grpc")?;
    let grpc_addr = grpc_listener.local_addr()?;
    let listener = TcpListener::bind(addresses[0])
        .await
        .with_context(|| format!("bind gateway on {}", addresses[0]))?;
    let addr = listener.local_addr()?;
    let mut listeners = vec![listener];
    for extra in &addresses[1..] {
        // The same port on the other loopback (a port 0 was resolved by
        // the first bind); a machine without IPv6 just serves 127.0.0.1.
        let extra = SocketAddr::new(extra.ip(), addr.port());
        match TcpListener::bind(extra).await {
            Ok(listener) => listeners.push(listener),
            Err(error) => tracing::debug!(%extra, %error, "not listening on the other loopback"),
        }
    }

    let map = SlotMap::single(
        0,
        NodeInfo {
            id: node_id.clone(),
            grpc_url: format!("http://{grpc_addr}"),
        },
    );
    let (_map_tx, map_rx) = watch::channel(Some(Arc::new(map)));
    let shutdown = CancellationToken::new();
    tokio::spawn(crate::wait_for_signal(shutdown.clone()));

    let storage = partyline_room_node::storage::NodeStorage::files(&room_config);
    let ready = crate::ops::room_node_readiness(&node_id, &storage, &map_rx);
    serving.start_ops(ready, shutdown.clone()).await?;
    tracing::info!(data_dir = %room_config.data_dir.display(), %grpc_addr, "room node started");
    // The link never leaves this process, yet its port is open to every
    // local user: a secret only this process knows keeps them off it.
    let link = LinkAuth::Secret(LinkSecret::random());
    let hooks = live_hooks.map(Arc::new);
    let events = hooks.as_ref().and_then(|hooks| hooks.events().cloned());
    let renders = partyline_room_node::render::Renders::new(room_config.render_concurrency);
    let room_node = tokio::spawn(partyline_room_node::run(
        grpc_listener,
        room_config,
        partyline_room_node::Resources {
            storage,
            hooks,
            renders,
        },
        map_rx.clone(),
        link.clone(),
        shutdown.clone(),
    ));
    let loopback = listeners.len() > 1 || addr.ip().is_loopback();
    let gateway = tokio::spawn(partyline_gateway::run_on(
        listeners,
        gateway_config,
        map_rx,
        link,
        shutdown.clone(),
    ));
    // Tests and scripts wait for this exact line on stdout.
    println!("partyline dev listening on ws://{addr}");
    let host = if loopback {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    };
    eprintln!(
        "\n  partyline dev\n  y-websocket  ws://{host}   (new WebsocketProvider('ws://{host}', room, doc))\n  \
         y-partykit   host: '{host}'   (new YPartyKitProvider('{host}', room, doc))\n  \
         data         {}\n  auth         {auth_mode}{}\n",
        data_dir.display(),
        if auth_mode == "none" {
            " (anyone may open and edit every room)"
        } else {
            ""
        },
    );

    // Either role ending (on shutdown, or on its own with an error) stops
    // the other, so the process never serves half a system.
    let (gateway_result, room_node_result) = tokio::join!(
        async {
            let result = gateway.await;
            shutdown.cancel();
            result
        },
        async {
            let result = room_node.await;
            shutdown.cancel();
            result
        },
    );
    crate::config::flush_events(events).await;
    gateway_result.context("gateway task")?.context("gateway")?;
    room_node_result.context("room node task")?;
    tracing::info!("stopped");
    Ok(())
}

/// Where `partyline dev` listens: `--listen` as given; else `--host` /
/// `HOST` with `--port` / `PORT`; else both loopbacks on the port (1999
/// unless said), the first being where the port is chosen.
fn listen_addresses(
    gateway: &GatewaySettings,
    host: Option<&str>,
    port: Option<&str>,
) -> anyhow::Result<Vec<SocketAddr>> {
    // Checked only when used: a stray PORT or HOST in the environment must
    // not stop a `--listen` run.
    if let Some(listen) = gateway.listen {
        return Ok(vec![listen]);
    }
    let port = match port {
        Some(port) => port
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("--port / PORT {port:?} is not a port number"))?,
        None => gateway.listen().port(),
    };
    match host {
        None | Some("localhost") => Ok(vec![
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), port),
        ]),
        Some(host) => {
            let ip: IpAddr = host.parse().map_err(|_| {
                anyhow::anyhow!("--host / HOST {host:?} is not an IP address or localhost")
            })?;
            Ok(vec![SocketAddr::new(ip, port)])
        }
    }
}
