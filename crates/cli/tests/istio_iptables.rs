//! `strait istio-iptables` (the real binary, as the injected istio-init container runs it) in a
//! network namespace of its own: the arguments `strait kube-inject` writes install Istio's
//! capture rules, the same rules `strait run` installs. Needs root, `ip` and `iptables`.

use std::process::Command;

/// A network namespace, deleted when dropped.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.0])
            .status();
    }
}

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| {
        panic!("{cmd} is needed for this test (install iproute2 and iptables): {e}")
    });
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn kube_injects_init_arguments_install_istios_rules_in_the_pods_namespace() {
    let name = format!("strait-iit-{}", std::process::id());
    let (ok, text) = run("ip", &["netns", "add", &name]);
    assert!(
        ok,
        "creating network namespace {name} (this test needs root): {text}"
    );
    let ns = Netns(name);
    let strait = env!("CARGO_BIN_EXE_strait");
    // The arguments of Istio's traffic-annotations golden (as kube-inject writes them).
    let (ok, text) = run(
        "ip",
        &[
            "netns",
            "exec",
            &ns.0,
            strait,
            "istio-iptables",
            "-p",
            "15001",
            "-z",
            "15006",
            "-u",
            "1337",
            "-m",
            "REDIRECT",
            "-i",
            "10.96.0.0/12",
            "-x",
            "10.96.0.2/32",
            "-b",
            "8080",
            "-d",
            "15090,15021,15020",
            "-o",
            "5432",
            "--log_output_level=default:info",
        ],
    );
    assert!(ok, "strait istio-iptables failed: {text}");
    let (ok, rules) = run(
        "ip",
        &["netns", "exec", &ns.0, "iptables-save", "-t", "nat"],
    );
    assert!(ok, "iptables-save: {rules}");
    for want in [
        "-A PREROUTING -p tcp -j ISTIO_INBOUND",
        "-A OUTPUT -p tcp -j ISTIO_OUTPUT",
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 8080 -j ISTIO_IN_REDIRECT",
        "-A ISTIO_INBOUND -p tcp -m tcp --dport 15021 -j RETURN",
        "-A ISTIO_OUTPUT -p tcp -m tcp --dport 5432 -j RETURN",
        "-A ISTIO_OUTPUT -d 10.96.0.2/32 -j RETURN",
        "-A ISTIO_OUTPUT -d 10.96.0.0/12 -j ISTIO_REDIRECT",
        "-m owner --uid-owner 1337 -j RETURN",
    ] {
        assert!(
            rules.contains(want),
            "{want:?} missing from the pod's nat table:\n{rules}"
        );
    }
    // What Strait cannot honour leaves the namespace untouched.
    let fresh = format!("{}-b", ns.0);
    let (ok, text) = run("ip", &["netns", "add", &fresh]);
    assert!(ok, "{text}");
    let fresh = Netns(fresh);
    let (ok, text) = run(
        "ip",
        &[
            "netns",
            "exec",
            &fresh.0,
            strait,
            "istio-iptables",
            "-m",
            "TPROXY",
        ],
    );
    assert!(!ok && text.contains("-m TPROXY"), "{text}");
    let (_, rules) = run(
        "ip",
        &["netns", "exec", &fresh.0, "iptables-save", "-t", "nat"],
    );
    assert!(
        !rules.contains("ISTIO_"),
        "rules were installed after a refusal:\n{rules}"
    );
}
