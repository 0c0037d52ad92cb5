//! `strait istio-iptables`: what the injected `istio-init` container runs. It takes
//! istio-iptables' flags (the ones `strait kube-inject` writes) and installs Istio's capture
//! rules in the current network namespace (the pod's) through the same code as `strait run`
//! (`strait_netns::CaptureRules`). What Strait's rules cannot do yet is refused, naming the
//! flag: a pod half captured would be worse than one that does not start.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use strait_netns::{CaptureRules, PROXY_GID, PROXY_UID};

#[derive(clap::Args, Debug)]
pub struct IstioIptablesArgs {
    /// The proxy's outbound capture port.
    #[arg(short = 'p', long = "envoy-port", default_value_t = 15001)]
    outbound_port: u16,
    /// The proxy's inbound capture port.
    #[arg(short = 'z', long = "inbound-capture-port", default_value_t = 15006)]
    inbound_port: u16,
    /// The proxy's uid (its own traffic is not captured).
    #[arg(short = 'u', long = "proxy-uid", default_value_t = PROXY_UID)]
    proxy_uid: u32,
    /// The proxy's gid.
    #[arg(short = 'g', long = "proxy-gid", default_value_t = PROXY_GID)]
    proxy_gid: u32,
    /// REDIRECT (TPROXY is not supported yet).
    #[arg(
        short = 'm',
        long = "istio-inbound-interception-mode",
        default_value = "REDIRECT"
    )]
    mode: String,
    /// Outbound destinations to capture: CIDRs separated by commas, `*` for all, empty for none.
    #[arg(short = 'i', long = "istio-service-cidr", default_value = "*")]
    include_ranges: String,
    /// Outbound destinations never captured.
    #[arg(short = 'x', long = "istio-service-exclude-cidr", default_value = "")]
    exclude_ranges: String,
    /// Inbound ports to capture: numbers separated by commas, `*` for all, empty for none.
    #[arg(short = 'b', long = "istio-inbound-ports", default_value = "*")]
    include_inbound_ports: String,
    /// Inbound ports never captured (besides the proxy's own).
    #[arg(short = 'd', long = "istio-local-exclude-ports", default_value = "")]
    exclude_inbound_ports: String,
    /// Outbound ports to capture (not supported yet: every port is).
    #[arg(short = 'q', long = "istio-include-outbound-ports", default_value = "")]
    include_outbound_ports: String,
    /// Outbound ports never captured.
    #[arg(
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        default_value = ""
    )]
    exclude_outbound_ports: String,
    /// Interfaces whose inbound traffic is treated as outbound (not supported yet).
    #[arg(short = 'k', long = "kube-virt-interfaces", default_value = "")]
    reroute_interfaces: String,
    /// Interfaces left alone (not supported yet).
    #[arg(short = 'c', long = "exclude-interfaces", default_value = "")]
    exclude_interfaces: String,
    /// Accepted for istio-iptables' compatibility; Strait logs with RUST_LOG.
    #[arg(long = "log_output_level")]
    log_output_level: Option<String>,
    /// Print the rules (iptables-restore input) instead of installing them.
    #[arg(short = 'n', long = "dry-run")]
    dry_run: bool,
}

impl IstioIptablesArgs {
    /// The rules these flags ask for, or which flag Strait cannot honour.
    fn rules(&self) -> Result<CaptureRules> {
        if self.mode != "REDIRECT" {
            bail!(
                "-m {}: Strait captures with REDIRECT only (TPROXY is not supported yet): use -m REDIRECT",
                self.mode
            );
        }
        if self.proxy_uid != PROXY_UID || self.proxy_gid != PROXY_GID {
            bail!(
                "-u {} -g {}: Strait's capture rules let only uid and gid {PROXY_UID} through for now: run the sidecar as {PROXY_UID}",
                self.proxy_uid,
                self.proxy_gid
            );
        }
        for (flag, value) in [
            ("-q", &self.include_outbound_ports),
            ("-k", &self.reroute_interfaces),
            ("-c", &self.exclude_interfaces),
        ] {
            if !value.is_empty() {
                bail!("{flag} {value}: not supported by Strait's capture rules yet: leave it out");
            }
        }
        // Through the annotations' code path, so the checks and the rules are `strait run`'s.
        let prefix = "traffic.sidecar.istio.io/";
        let annotations: BTreeMap<String, String> = [
            ("includeOutboundIPRanges", &self.include_ranges),
            ("excludeOutboundIPRanges", &self.exclude_ranges),
            ("includeInboundPorts", &self.include_inbound_ports),
            ("excludeInboundPorts", &self.exclude_inbound_ports),
            ("excludeOutboundPorts", &self.exclude_outbound_ports),
        ]
        .into_iter()
        .map(|(k, v)| (format!("{prefix}{k}"), v.clone()))
        .collect();
        let mut rules = CaptureRules::from_annotations(&annotations)
            .context("istio-iptables flags (-i, -x, -b, -d, -o)")?;
        rules.outbound_port = self.outbound_port;
        rules.inbound_port = self.inbound_port;
        Ok(rules)
    }
}

pub fn run(args: IstioIptablesArgs) -> Result<ExitCode> {
    let _ = &args.log_output_level;
    let rules = args.rules()?;
    let input = rules.restore_input();
    if args.dry_run {
        print!("{input}");
        return Ok(ExitCode::SUCCESS);
    }
    strait_netns::run_tool_stdin("iptables-restore", &["--noflush"], Some(&input))
        .context("installing the capture rules (the container needs NET_ADMIN and NET_RAW)")?;
    eprintln!(
        "capture rules installed: outbound to {}, inbound to {}",
        rules.outbound_port, rules.inbound_port
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: IstioIptablesArgs,
    }

    fn parse(args: &[&str]) -> Result<CaptureRules> {
        let cli =
            Cli::try_parse_from(std::iter::once("istio-iptables").chain(args.iter().copied()))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        cli.args.rules()
    }

    #[test]
    fn kube_injects_default_arguments_are_strait_runs_rules() {
        // What `strait kube-inject` writes for a pod without annotations.
        let args = strait_inject::annotations::Settings::read(
            &BTreeMap::new(),
            &strait_inject::Values::default(),
        )
        .unwrap()
        .init_args(1337);
        assert_eq!(args[0], "istio-iptables");
        let strs: Vec<&str> = args[1..].iter().map(String::as_str).collect();
        let rules = parse(&strs).unwrap();
        let run = CaptureRules::default();
        assert_eq!(rules.restore_input(), run.restore_input());
    }

    #[test]
    fn istios_traffic_annotations_case() {
        // Istio's traffic-annotations golden: -i 127.0.0.1/24,10.96.0.1/24 -x ... -b 1,2,3
        // -d 15090,15021,4,5,6,15020 -o 7,8,9.
        let rules = parse(&[
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "127.0.0.1/24,10.96.0.1/24",
            "-x",
            "10.96.0.2/24,10.96.0.3/24",
            "-b",
            "1,2,3",
            "-d",
            "15090,15021,4,5,6,15020",
            "-o",
            "7,8,9",
            "--log_output_level=default:info",
        ])
        .unwrap();
        assert_eq!(rules.include_inbound_ports, Some(vec![1, 2, 3]));
        assert!(
            rules.exclude_inbound_ports.contains(&4)
                && rules.exclude_inbound_ports.contains(&15090)
        );
        assert_eq!(rules.exclude_outbound_ports, vec![7, 8, 9]);
        assert_eq!(
            rules.exclude_outbound_ranges,
            ["10.96.0.2/24", "10.96.0.3/24"]
        );
        assert_eq!(
            rules.include_outbound_ranges,
            Some(vec!["127.0.0.1/24".to_string(), "10.96.0.1/24".to_string()])
        );
        let input = rules.restore_input();
        assert!(
            input.contains("-A ISTIO_INBOUND -p tcp --dport 2 -j ISTIO_IN_REDIRECT"),
            "{input}"
        );
        assert!(
            !input.contains("-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT"),
            "{input}"
        );
    }

    #[test]
    fn empty_includes_capture_nothing() {
        // Istio's traffic-annotations-empty-includes: -i "" -b "".
        let rules = parse(&["-i", "", "-b", ""]).unwrap();
        assert_eq!(rules.include_inbound_ports, Some(vec![]));
        assert_eq!(rules.include_outbound_ranges, Some(vec![]));
        let input = rules.restore_input();
        let to = |chain: &str, target: &str| {
            input
                .lines()
                .filter(|l| l.starts_with(&format!("-A {chain} ")) && l.ends_with(target))
                .count()
        };
        assert_eq!(to("ISTIO_INBOUND", "-j ISTIO_IN_REDIRECT"), 0, "{input}");
        assert_eq!(to("ISTIO_OUTPUT", "-j ISTIO_REDIRECT"), 0, "{input}");
    }

    #[test]
    fn what_strait_cannot_do_is_refused_naming_the_flag() {
        for (args, flag) in [
            (vec!["-m", "TPROXY"], "-m TPROXY"),
            (vec!["-u", "1234"], "-u 1234"),
            (vec!["-q", "80"], "-q 80"),
            (vec!["-k", "net1"], "-k net1"),
            (vec!["-c", "eth1"], "-c eth1"),
        ] {
            let e = parse(&args).unwrap_err().to_string();
            assert!(e.contains(flag), "{e}");
        }
        let e = format!("{:#}", parse(&["-b", "http"]).unwrap_err());
        assert!(e.contains("includeInboundPorts") || e.contains("-b"), "{e}");
    }
}
