//! Binds a socket for each listener in the config and stops serving it when the listener goes
//! away (or moves to another address). Connections in flight finish on their own.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::Shared;

struct Bound {
    address: SocketAddr,
    task: JoinHandle<()>,
}

/// Follows config changes forever.
pub(crate) async fn run(shared: Arc<Shared>) {
    let mut changes = shared.generation.subscribe();
    let mut bound: BTreeMap<String, Bound> = BTreeMap::new();
    loop {
        let config = shared.config.load_full();
        bound.retain(|name, b| {
            let keep = config
                .listeners
                .get(name)
                .is_some_and(|l| l.address == b.address);
            if !keep {
                tracing::info!(listener = %name, address = %b.address, "listener removed: closing");
                b.task.abort();
            }
            keep
        });
        for (name, listener) in &config.listeners {
            if bound.contains_key(name) {
                continue;
            }
            match tokio::net::TcpListener::bind(listener.address).await {
                Ok(tcp) => {
                    tracing::info!(listener = %name, address = %listener.address, "listening");
                    let task = tokio::spawn(crate::http::serve(
                        shared.clone(),
                        name.clone(),
                        listener.http.codec,
                        tcp,
                    ));
                    bound.insert(
                        name.clone(),
                        Bound {
                            address: listener.address,
                            task,
                        },
                    );
                }
                // Retried on the next config change (Envoy would reject the listener).
                Err(e) => {
                    tracing::error!(listener = %name, address = %listener.address, error = %e, "cannot bind")
                }
            }
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}
