//! `bookinfo`: Istio's Bookinfo sample application, written in Rust. One binary, one service per
//! process: `bookinfo productpage|details|reviews|ratings [--listen ADDR:PORT]`.
//!
//! The services have the HTTP API, ports and behaviour of Istio's (productpage in Python,
//! details in Ruby, reviews in Java, ratings in Node.js), so Istio's tasks and sample YAML work
//! with them unchanged. They find each other by host name (`http://reviews:9080`), read the same
//! environment variables as Istio's, and honour `HTTP_PROXY`/`NO_PROXY` for a sidecar that
//! does not capture traffic.

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod client;
mod details;
mod headers;
mod page;
mod productpage;
mod ratings;
mod reviews;

use std::net::SocketAddr;

use anyhow::{Context, Result};
use axum::Router;
use clap::{Parser, Subcommand, ValueEnum};
use tokio::net::TcpListener;

use client::{Client, Upstream};

/// Istio's Bookinfo sample, one service per process.
#[derive(Parser)]
#[command(name = "bookinfo", version)]
struct Args {
    #[command(subcommand)]
    service: Service,
}

#[derive(Subcommand)]
enum Service {
    /// The front end: the book's page (/productpage), login, and the API (/api/v1/products).
    /// Calls details and reviews.
    Productpage(Serve),
    /// The book's details (/details/0).
    Details(Versioned),
    /// The book's reviews (/reviews/0): v1 without stars; v2 (black) and v3 (red) call ratings.
    Reviews(Versioned),
    /// The reviewers' ratings (/ratings/0).
    Ratings(Versioned),
}

#[derive(clap::Args)]
struct Serve {
    /// Where to listen [default: port 9080 on `$STRAIT_APP_ADDRESS` (the address `strait run`
    /// gives an app whose sidecar does not capture traffic), else on 0.0.0.0].
    #[arg(long)]
    listen: Option<SocketAddr>,
}

impl Serve {
    fn address(&self) -> Result<SocketAddr> {
        listen_address(self.listen, std::env::var("STRAIT_APP_ADDRESS").ok())
    }
}

/// `--listen`, else port 9080 on the app's address from `strait run`, else on every address.
fn listen_address(flag: Option<SocketAddr>, app_address: Option<String>) -> Result<SocketAddr> {
    if let Some(a) = flag {
        return Ok(a);
    }
    let ip = match app_address.filter(|a| !a.is_empty()) {
        Some(a) => a.parse().with_context(|| {
            format!("STRAIT_APP_ADDRESS {a:?} is not an IP address: unset it, or pass --listen ADDR:PORT")
        })?,
        None => std::net::Ipv4Addr::UNSPECIFIED.into(),
    };
    Ok(SocketAddr::new(ip, client::DEFAULT_PORT))
}

#[derive(clap::Args)]
struct Versioned {
    #[command(flatten)]
    serve: Serve,
    /// The service's version (for reviews: v1 no stars, v2 black stars, v3 red stars).
    #[arg(long, env = "SERVICE_VERSION", value_enum, default_value = "v1")]
    version: Version,
}

/// A service version, as the `version` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Version {
    V1,
    V2,
    V3,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let (name, version, listen, app) = match args.service {
        Service::Productpage(serve) => {
            let pp = productpage::ProductPage {
                client: Client::from_env()?,
                details: Upstream::from_env("details")?,
                reviews: Upstream::from_env("reviews")?,
                ratings: Upstream::from_env("ratings")?,
            };
            let app = productpage::router(pp);
            ("productpage", Version::V1, serve.address()?, app)
        }
        Service::Details(v) => ("details", v.version, v.serve.address()?, details::router()),
        Service::Ratings(v) => ("ratings", v.version, v.serve.address()?, ratings::router()),
        Service::Reviews(v) => {
            let reviews = reviews::Reviews {
                version: v.version,
                client: Client::from_env()?,
                ratings: Upstream::from_env("ratings")?,
                podname: std::env::var("HOSTNAME").ok(),
                clustername: std::env::var("CLUSTER_NAME").ok(),
            };
            (
                "reviews",
                v.version,
                v.serve.address()?,
                reviews::router(reviews),
            )
        }
    };
    serve(name, version, listen, app).await
}

async fn serve(name: &str, version: Version, listen: SocketAddr, app: Router) -> Result<()> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}: pick a free port with --listen"))?;
    let addr = listener.local_addr()?;
    let version = format!("{version:?}").to_lowercase();
    tracing::info!(service = name, %version, %addr, "serving");
    // One line on stdout for whoever started us (tests) to learn the port.
    println!("bookinfo {name} {version} listening on {addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await
        .with_context(|| format!("{name} stopped serving on {addr}"))
}

/// Ctrl-C or SIGTERM.
async fn shutdown() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("cannot listen for SIGTERM");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listens_on_the_flag_else_the_app_address_else_everywhere() {
        let flag: SocketAddr = "127.0.0.1:19080".parse().unwrap();
        let given = listen_address(Some(flag), Some("127.45.0.2".into())).unwrap();
        assert_eq!(given, flag);
        let app = listen_address(None, Some("127.45.0.2".into())).unwrap();
        assert_eq!(app, "127.45.0.2:9080".parse().unwrap());
        let any = listen_address(None, None).unwrap();
        assert_eq!(any, "0.0.0.0:9080".parse().unwrap());
        let err = listen_address(None, Some("reviews".into()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("STRAIT_APP_ADDRESS \"reviews\"") && err.contains("--listen"),
            "{err}"
        );
    }
}
