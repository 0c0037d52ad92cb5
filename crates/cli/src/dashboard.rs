//! `strait dashboard`: the address of the control plane's web UI (the service graph, traces,
//! proxy status), like `istioctl dashboard kiali` prints Kiali's. The page is the control
//! plane's own (`/dashboard/` on its API port); from loopback its data needs no token, from
//! elsewhere the printed URL carries the token in its fragment (which browsers never send).

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::client::Connection;

/// The dashboard's path on the API port.
pub const PATH: &str = "/dashboard/";

/// The URL of the dashboard of the control plane at `base` (`http://HOST:PORT`).
pub fn url(base: &str, token: Option<&str>) -> String {
    let base = base.trim_end_matches('/');
    let host = base.split("://").nth(1).unwrap_or(base);
    let loopback = host
        .rsplit_once(':')
        .map_or(host, |(h, _)| h)
        .trim_matches(['[', ']'])
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
        || host.starts_with("localhost");
    match token {
        Some(t) if !loopback => format!("{base}{PATH}#token={t}"),
        _ => format!("{base}{PATH}"),
    }
}

pub fn run(conn: &Connection) -> Result<ExitCode> {
    let client = conn.connect()?;
    let answer = client.request("GET", "/api/graph", None)?;
    if !answer.is_success() {
        bail!(
            "the control plane at {} does not serve the dashboard ({}): is it an older version?",
            client.addresses().join(", "),
            answer.message()
        );
    }
    let base = format!("http://{}", client.addresses()[0]);
    println!("{}", url(&base, Some(client.token())));
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_rides_along_only_beyond_loopback() {
        assert_eq!(
            url("http://127.0.0.1:15014", Some("t")),
            "http://127.0.0.1:15014/dashboard/"
        );
        assert_eq!(
            url("http://[::1]:15014/", Some("t")),
            "http://[::1]:15014/dashboard/"
        );
        assert_eq!(
            url("http://10.0.0.5:15014", Some("t")),
            "http://10.0.0.5:15014/dashboard/#token=t"
        );
    }
}
