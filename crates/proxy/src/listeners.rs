//! Binds a socket for each listener in the config that asks for one, and stops serving it when
//! the listener goes away (or moves to another address), or for all of them once the proxy
//! drains (`/drain_listeners`): the socket closes, and the listener's HTTP connections close
//! once their requests in flight are answered (TCP connections go on until they end). Each accepted connection gets its destination (the original one, read with
//! SO_ORIGINAL_DST, when the listener has the `original_dst` filter or `use_original_dst`), is
//! handed to the listener of that destination when `use_original_dst` says so, and runs the
//! network filter of the filter chain that matches it: the HTTP connection manager or tcp_proxy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::Shared;
use crate::config::listener::Detected;
use crate::config::{Config, FilterChain, Listener, NetworkFilter};
use crate::io::{Io, Prefixed};
use crate::tls::DownstreamSession;
use crate::tls::sniff::{self, Sniffed};

struct Bound {
    address: SocketAddr,
    task: JoinHandle<()>,
    /// The version of the listener its connections were accepted with.
    version: Arc<Listener>,
    /// Tells the connections accepted since the last version change to drain; new
    /// connections subscribe to the current one.
    drain: Arc<Mutex<watch::Sender<bool>>>,
}

impl Bound {
    fn close(&self) {
        self.task.abort();
        lock(&self.drain).send_replace(true);
    }

    /// The listener changed in place: the connections accepted with the old version drain
    /// (as Envoy drains a listener it replaces), so that what changed, an authorization policy
    /// above all, holds for every request from now on; new connections get the new version.
    fn update(&mut self, version: &Arc<Listener>) {
        if Arc::ptr_eq(&self.version, version) || *self.version == **version {
            self.version = version.clone();
            return;
        }
        self.version = version.clone();
        let old = std::mem::replace(&mut *lock(&self.drain), watch::channel(false).0);
        old.send_replace(true);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Follows config changes forever.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut changes = shared.generation.subscribe();
    let mut draining = shared.drain.subscribe();
    let mut bound: BTreeMap<String, Bound> = BTreeMap::new();
    loop {
        if *draining.borrow_and_update() {
            tracing::info!(listeners = bound.len(), "draining: every listener closed");
            for b in bound.values() {
                b.close();
            }
            // The open connections still need the drain signals: keep them until the end.
            std::future::pending::<()>().await;
        }
        let config = shared.config.load_full();
        bound.retain(|name, b| {
            let current = config
                .listeners
                .get(name)
                .filter(|l| l.bind && l.address == b.address);
            match current {
                Some(l) => {
                    b.update(l);
                    true
                }
                None => {
                    tracing::info!(listener = %name, address = %b.address, "listener removed: closing");
                    b.close();
                    false
                }
            }
        });
        for (name, listener) in config.listeners.iter().filter(|(_, l)| l.bind) {
            if bound.contains_key(name) {
                continue;
            }
            match TcpListener::bind(listener.address).await {
                Ok(tcp) => {
                    tracing::info!(listener = %name, address = %listener.address, "listening");
                    let drain = Arc::new(Mutex::new(watch::channel(false).0));
                    let task = tokio::spawn(accept(
                        shared.clone(),
                        name.as_str().into(),
                        tcp,
                        drain.clone(),
                    ));
                    bound.insert(
                        name.clone(),
                        Bound {
                            address: listener.address,
                            task,
                            version: listener.clone(),
                            drain,
                        },
                    );
                }
                // Retried on the next config change (Envoy would reject the listener).
                Err(e) => {
                    tracing::error!(listener = %name, address = %listener.address, error = %e, "cannot bind")
                }
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() {
                return;
            },
            _ = draining.changed() => {}
        }
    }
}

/// Accepts connections on one listener's socket until aborted.
async fn accept(
    shared: Arc<Shared>,
    listener: Arc<str>,
    tcp: TcpListener,
    drain: Arc<Mutex<watch::Sender<bool>>>,
) {
    loop {
        let (stream, peer) = match tcp.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(%listener, error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let span = tracing::debug_span!("conn", %peer, listener = %listener);
        tokio::spawn(
            connection(
                shared.clone(),
                listener.clone(),
                stream,
                peer,
                lock(&drain).subscribe(),
            )
            .instrument(span),
        );
    }
}

/// Serves one accepted connection with the filter chain that matches it: its destination
/// (restored with SO_ORIGINAL_DST where the listener says so), the listener it is handed to,
/// what `tls_inspector` reads from its first bytes, then the chain, TLS terminated when the
/// chain says so, and the chain's network filter.
async fn connection(
    shared: Arc<Shared>,
    listener: Arc<str>,
    mut stream: TcpStream,
    peer: SocketAddr,
    drain: watch::Receiver<bool>,
) {
    let _open = shared.open_connection();
    let Ok(local) = stream.local_addr() else {
        return;
    };
    let (target, destination, restored) = {
        let config = shared.config.load();
        let Some(l) = config.listeners.get(&*listener) else {
            return;
        };
        let restored = if l.original_dst || l.use_original_dst {
            crate::original_dst::get(&stream)
        } else {
            None
        };
        let destination = restored.unwrap_or(local);
        let target = if l.use_original_dst {
            handoff(&config, l, destination)
        } else {
            l
        };
        (
            config.listeners.get(&target.name).cloned(),
            destination,
            restored,
        )
    };
    let Some(target) = target else { return };
    let (first_bytes, detected) = if target.tls_inspector {
        match inspect(&mut stream, &target).await {
            Some(inspected) => inspected,
            None => return,
        }
    } else {
        (Vec::new(), Detected::raw())
    };
    let Some(chain) = target.chain_for(destination, &detected) else {
        tracing::debug!(%destination, listener = %target.name, ?detected, "no filter chain matches: closing");
        // Reset, as Envoy's close does: its listener filters peek, so what the client sent is
        // still unread when it closes (curl: "Connection reset by peer", exit 56).
        let _ = stream.set_zero_linger();
        return;
    };
    tracing::debug!(%destination, listener = %target.name, chain = %chain.name, "filter chain");
    shared.stats.listener_connection(target.address);
    let io = match &chain.tls {
        None if target.tls_inspector => Io::Sniffed(Prefixed::new(first_bytes, stream)),
        None => Io::Tcp(stream),
        Some(tls) => {
            let configs = match shared.tls.server(tls) {
                Ok(c) => c,
                Err(e) => {
                    shared.stats.tls_handshake_failed(target.address);
                    tracing::warn!(%peer, listener = %target.name, chain = %chain.name, error = %e, "TLS refused: the filter chain's certificates are not available");
                    return;
                }
            };
            let prefixed = Prefixed::new(first_bytes, stream);
            match crate::tls::accept(&configs, tls, &detected.alpn, prefixed).await {
                Ok((tls_stream, session)) => {
                    shared.stats.tls_handshake(target.address);
                    tracing::debug!(%peer, peer_identity = ?session.peer.as_ref().and_then(|p| p.principal()), sni = ?session.server_name, alpn = ?session.alpn, "TLS terminated");
                    return serve(
                        &shared,
                        chain,
                        Io::Tls(Box::new(tls_stream)),
                        Accepted {
                            peer,
                            local,
                            restored,
                            destination,
                            tls: Some(Arc::new(session)),
                            inbound: target.inbound,
                            disabled_metrics: target.disabled_metrics,
                        },
                        drain,
                    )
                    .await;
                }
                Err(e) => {
                    shared.stats.tls_handshake_failed(target.address);
                    tracing::warn!(%peer, listener = %target.name, chain = %chain.name, reason = %e, "TLS handshake refused");
                    return;
                }
            }
        }
    };
    serve(
        &shared,
        chain,
        io,
        Accepted {
            peer,
            local,
            restored,
            destination,
            tls: None,
            inbound: target.inbound,
            disabled_metrics: target.disabled_metrics,
        },
        drain,
    )
    .await;
}

/// An accepted connection, as the network filters see it.
pub(crate) struct Accepted {
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    /// The original destination, when SO_ORIGINAL_DST restored one.
    pub(crate) restored: Option<SocketAddr>,
    /// Where the client connected to: the original destination, else the local address.
    pub(crate) destination: SocketAddr,
    /// What the TLS handshake established, when the filter chain terminated TLS.
    pub(crate) tls: Option<Arc<DownstreamSession>>,
    /// The listener is inbound (`traffic_direction: INBOUND`).
    pub(crate) inbound: bool,
    /// Istio's metrics the listener does not report.
    pub(crate) disabled_metrics: strait_telemetry::MetricSet,
}

impl Accepted {
    /// The connection as authorization reads it: addresses, the peer's SPIFFE id when it
    /// presented a certificate, the server name it asked for.
    pub(crate) fn authz_connection(&self) -> strait_authz::Connection {
        strait_authz::Connection {
            source: self.peer,
            destination: self.destination,
            peer_principal: self
                .tls
                .as_ref()
                .and_then(|t| t.peer.as_ref())
                .and_then(|p| p.principal())
                .map(str::to_string),
            sni: self.tls.as_ref().and_then(|t| t.server_name.clone()),
        }
    }
}

async fn serve(
    shared: &Arc<Shared>,
    chain: &FilterChain,
    io: Io,
    down: Accepted,
    drain: watch::Receiver<bool>,
) {
    if !chain.rbac.is_empty() {
        let connection = down.authz_connection();
        let metadata = strait_authz::Metadata::new();
        let input = strait_authz::Input {
            connection: &connection,
            request: None,
            metadata: &metadata,
        };
        for filter in &chain.rbac {
            let decision = filter.decide(&input);
            if let Some((Some(policy), allowed)) = &decision.shadow {
                tracing::info!(peer = %down.peer, chain = %chain.name, %policy, would_allow = allowed, "RBAC shadow rule (dry run) matched");
            }
            if !decision.allowed {
                shared.stats.flag("RBAC");
                tracing::info!(peer = %down.peer, chain = %chain.name, denial = %filter.explain_denial(&decision, &input), "connection denied by RBAC: closed");
                io.reset_on_close();
                return;
            }
        }
    }
    match &chain.filter {
        NetworkFilter::Http(hcm) => {
            crate::http::serve_connection(shared.clone(), hcm.clone(), io, down, drain).await
        }
        NetworkFilter::Tcp(tcp) => crate::tcp::proxy(shared, tcp, io, &down).await,
    }
}

/// `tls_inspector`: reads the connection's first bytes until they say whether it is TLS (and
/// a whole ClientHello its server name and ALPN), within the listener's filter timeout. The
/// bytes read are returned, to be read again. `None`: close the connection.
async fn inspect(stream: &mut TcpStream, listener: &Listener) -> Option<(Vec<u8>, Detected)> {
    let mut buf = Vec::with_capacity(1024);
    let reading = async {
        loop {
            match sniff::sniff(&buf) {
                Sniffed::Tls { server_name, alpn } => {
                    return Some(Detected {
                        transport_protocol: "tls",
                        server_name,
                        alpn,
                    });
                }
                Sniffed::Plaintext => return Some(Detected::raw()),
                Sniffed::NeedMore => {}
            }
            buf.reserve(1024);
            match stream.read_buf(&mut buf).await {
                // The client closed, or sent nothing more: whatever came is plaintext.
                Ok(0) => return Some(Detected::raw()),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    };
    let detected = match listener.listener_filters_timeout {
        None => reading.await,
        Some(limit) => match tokio::time::timeout(limit, reading).await {
            Ok(d) => d,
            Err(_) if listener.continue_on_listener_filters_timeout => Some(Detected::raw()),
            Err(_) => {
                tracing::debug!(listener = %listener.name, ?limit, "no bytes within the listener filters timeout: closing");
                None
            }
        },
    }?;
    Some((buf, detected))
}

/// `use_original_dst`: the listener whose address is the connection's original destination,
/// else one on the wildcard address of that port, else `own`.
pub(crate) fn handoff<'a>(
    config: &'a Config,
    own: &'a Listener,
    destination: SocketAddr,
) -> &'a Listener {
    let others = || config.listeners.values().filter(|l| l.name != own.name);
    others()
        .find(|l| l.address == destination)
        .or_else(|| {
            others().find(|l| {
                l.address.port() == destination.port()
                    && l.address.ip().is_unspecified()
                    && l.address.is_ipv4() == destination.is_ipv4()
            })
        })
        .map_or(own, |l| l.as_ref())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::listener::{ChainMatch, Cidr, FilterChain, TcpProxyConfig};
    use crate::config::route::Target;

    fn tcp_chain(name: &str, port: Option<u16>, ranges: &[(&str, u8)]) -> FilterChain {
        FilterChain {
            name: name.into(),
            rbac: Vec::new(),
            matcher: ChainMatch {
                destination_port: port,
                prefix_ranges: ranges
                    .iter()
                    .map(|(a, l)| Cidr {
                        address: a.parse().unwrap(),
                        prefix_len: *l,
                    })
                    .collect(),
                ..ChainMatch::default()
            },
            tls: None,
            filter: NetworkFilter::Tcp(TcpProxyConfig {
                target: Target::Cluster(name.into()),
                idle_timeout: None,
            }),
        }
    }

    fn listener(name: &str, addr: &str, chains: Vec<FilterChain>) -> Listener {
        Listener {
            name: name.into(),
            address: addr.parse().unwrap(),
            bind: true,
            use_original_dst: false,
            original_dst: false,
            tls_inspector: false,
            listener_filters_timeout: None,
            continue_on_listener_filters_timeout: false,
            inbound: false,
            disabled_metrics: Default::default(),
            filter_chains: chains,
            default_filter_chain: None,
        }
    }

    fn chain_name(l: &Listener, dest: &str) -> Option<String> {
        l.chain_for(dest.parse().unwrap(), &Detected::raw())
            .map(|c| c.name.clone())
    }

    #[test]
    fn virtual_inbound_picks_the_chain_of_the_destination_port_else_the_default() {
        let mut l = listener(
            "virtualInbound",
            "0.0.0.0:15006",
            vec![
                tcp_chain("blackhole", Some(15006), &[]),
                tcp_chain("0.0.0.0_9080", Some(9080), &[]),
                tcp_chain("0.0.0.0_9000", Some(9000), &[]),
            ],
        );
        assert_eq!(
            chain_name(&l, "10.0.0.1:9080").as_deref(),
            Some("0.0.0.0_9080")
        );
        assert_eq!(
            chain_name(&l, "10.0.0.1:9000").as_deref(),
            Some("0.0.0.0_9000")
        );
        assert_eq!(
            chain_name(&l, "10.0.0.1:15006").as_deref(),
            Some("blackhole")
        );
        assert_eq!(chain_name(&l, "10.0.0.1:7777"), None);
        l.default_filter_chain = Some(tcp_chain("passthrough", None, &[]));
        assert_eq!(
            chain_name(&l, "10.0.0.1:7777").as_deref(),
            Some("passthrough")
        );
    }

    #[test]
    fn a_port_match_beats_no_port_and_the_longest_prefix_wins() {
        let l = listener(
            "l",
            "0.0.0.0:80",
            vec![
                tcp_chain("any", None, &[]),
                tcp_chain("ten", None, &[("10.0.0.0", 8)]),
                tcp_chain("ten-one", None, &[("10.1.0.0", 16)]),
                tcp_chain("port", Some(443), &[]),
            ],
        );
        assert_eq!(chain_name(&l, "10.1.2.3:80").as_deref(), Some("ten-one"));
        assert_eq!(chain_name(&l, "10.2.2.3:80").as_deref(), Some("ten"));
        assert_eq!(chain_name(&l, "192.168.0.1:80").as_deref(), Some("any"));
        assert_eq!(chain_name(&l, "10.1.2.3:443").as_deref(), Some("port"));
        assert_eq!(chain_name(&l, "[::1]:80").as_deref(), Some("any"));
    }

    #[test]
    fn cidr_ranges_hold_their_addresses() {
        let c = |a: &str, l| Cidr {
            address: a.parse().unwrap(),
            prefix_len: l,
        };
        assert!(c("10.0.0.0", 8).contains("10.255.1.1".parse().unwrap()));
        assert!(!c("10.0.0.0", 8).contains("11.0.0.1".parse().unwrap()));
        assert!(c("10.1.2.3", 32).contains("10.1.2.3".parse().unwrap()));
        assert!(c("0.0.0.0", 0).contains("1.2.3.4".parse().unwrap()));
        assert!(c("10.0.0.128", 25).contains("10.0.0.200".parse().unwrap()));
        assert!(!c("10.0.0.128", 25).contains("10.0.0.100".parse().unwrap()));
        assert!(c("fd00::", 8).contains("fd12::1".parse().unwrap()));
        assert!(!c("fd00::", 8).contains("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn virtual_outbound_hands_connections_to_the_listener_of_their_destination() {
        let mut config = Config::default();
        let mut vo = listener("virtualOutbound", "0.0.0.0:15001", vec![]);
        vo.use_original_dst = true;
        vo.default_filter_chain = Some(tcp_chain("PassthroughCluster", None, &[]));
        for l in [
            vo,
            listener("0.0.0.0_9080", "0.0.0.0:9080", vec![]),
            listener("240.240.0.5_9000", "240.240.0.5:9000", vec![]),
            listener("0.0.0.0_9000", "0.0.0.0:9000", vec![]),
        ] {
            config.listeners.insert(l.name.clone(), Arc::new(l));
        }
        let vo = &config.listeners["virtualOutbound"];
        let to = |d: &str| handoff(&config, vo, d.parse().unwrap()).name.clone();
        assert_eq!(to("240.240.0.7:9080"), "0.0.0.0_9080");
        assert_eq!(to("240.240.0.5:9000"), "240.240.0.5_9000");
        assert_eq!(to("240.240.0.6:9000"), "0.0.0.0_9000");
        assert_eq!(to("93.184.216.34:443"), "virtualOutbound");
        // Never to itself through the wildcard rule.
        assert_eq!(to("10.0.0.1:15001"), "virtualOutbound");
    }
}
