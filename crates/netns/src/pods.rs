//! Pods: their addresses, their network, and the state files that record them.

use std::fs::{self, File};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::proc::{ProcId, alive, terminate};
use crate::{CaptureRules, Error, PodRange, run_tool, run_tool_stdin};

/// Where loopback pods (no namespace) take their addresses from.
pub const LOOPBACK_RANGE: &str = "127.44.0.0/16";
/// Where the apps of loopback pods serve: the pod's address with 127.45 for 127.44, so that
/// apps on the same port (reviews v1, v2 and v3 on 9080) do not collide with each other or
/// with the sidecars, which serve on the pods' own addresses.
const LOOPBACK_APP_PREFIX: [u8; 2] = [127, 45];

/// How long a recorded process gets between SIGTERM and SIGKILL when a pod is removed.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// What a pod is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PodKind {
    /// Its own network namespace on the bridge (needs root).
    Namespace,
    /// A loopback address of its own for the sidecar, and one for the app
    /// ([`PodRecord::app_ip`]).
    Loopback,
    /// The host's own network, at an address the owner gives (a gateway).
    Host,
}

/// A pod's state file: what was made for it and which processes own it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodRecord {
    /// `NAME.NAMESPACE`.
    pub name: String,
    pub kind: PodKind,
    pub ip: Ipv4Addr,
    /// The network namespace (namespace pods).
    pub netns: Option<String>,
    /// The host side of the veth (namespace pods).
    pub veth: Option<String>,
    /// The process that made the pod (`strait run`); when it is gone, the pod is stale.
    pub owner: ProcId,
    /// Processes started for the pod (sidecar, app).
    pub processes: Vec<ProcId>,
    /// What the owner registered elsewhere (API resources), for whoever cleans up after it.
    #[serde(default)]
    pub registrations: serde_json::Value,
}

impl PodRecord {
    /// Where the app of a loopback pod serves (the sidecar's inbound traffic goes there);
    /// other pods' apps serve on their own network's addresses.
    pub fn app_ip(&self) -> Option<Ipv4Addr> {
        (self.kind == PodKind::Loopback).then(|| {
            let [_, _, c, d] = self.ip.octets();
            let [a, b] = LOOPBACK_APP_PREFIX;
            Ipv4Addr::new(a, b, c, d)
        })
    }

    /// Is its owner gone?
    pub fn is_stale(&self) -> bool {
        !alive(self.owner)
    }

    /// The hosts file `ip netns exec` mounts over `/etc/hosts` in the pod.
    pub fn hosts_path(&self) -> Option<PathBuf> {
        self.netns
            .as_ref()
            .map(|n| Path::new("/etc/netns").join(n).join("hosts"))
    }
}

/// The pods of this machine, recorded in a run directory.
#[derive(Debug, Clone)]
pub struct Pods {
    dir: PathBuf,
    bridge: String,
    range: PodRange,
    loopback: PodRange,
}

impl Pods {
    /// Pods recorded in `dir`, on `bridge` with addresses from `range`.
    pub fn new(dir: impl Into<PathBuf>, bridge: &str, range: PodRange) -> Pods {
        Pods {
            dir: dir.into(),
            bridge: bridge.to_string(),
            range,
            loopback: LOOPBACK_RANGE.parse().expect("a valid range"),
        }
    }

    /// The run directory: `$STRAIT_RUN_DIR`, else `/run/strait` for root, else
    /// `$XDG_RUNTIME_DIR/strait`, else `TMPDIR/strait-USER`.
    pub fn default_dir() -> PathBuf {
        if let Some(d) = std::env::var_os("STRAIT_RUN_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(d);
        }
        let root = fs::metadata("/proc/self")
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
            .unwrap_or(false);
        if root {
            return PathBuf::from("/run/strait");
        }
        if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
            return PathBuf::from(d).join("strait");
        }
        let user = std::env::var("USER").unwrap_or_else(|_| "user".into());
        std::env::temp_dir().join(format!("strait-{user}"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn range(&self) -> PodRange {
        self.range
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    fn pods_dir(&self) -> PathBuf {
        self.dir.join("pods")
    }

    fn record_path(&self, name: &str) -> PathBuf {
        self.pods_dir().join(format!("{name}.json"))
    }

    /// Holds the run directory's lock until dropped: allocation and removal are serialized
    /// between concurrent runs.
    fn lock(&self) -> Result<File, Error> {
        fs::create_dir_all(self.pods_dir())
            .map_err(|e| Error::io("cannot create", self.pods_dir(), e))?;
        let path = self.dir.join("lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io("cannot open", &path, e))?;
        file.lock()
            .map_err(|e| Error::io("cannot lock", &path, e))?;
        Ok(file)
    }

    /// Every recorded pod.
    pub fn list(&self) -> Vec<PodRecord> {
        let Ok(entries) = fs::read_dir(self.pods_dir()) else {
            return Vec::new();
        };
        let mut out: Vec<PodRecord> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| {
                let text = fs::read_to_string(e.path()).ok()?;
                match serde_json::from_str(&text) {
                    Ok(r) => Some(r),
                    Err(err) => {
                        tracing::warn!(path = %e.path().display(), %err, "unreadable pod record skipped");
                        None
                    }
                }
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn write(&self, rec: &PodRecord) -> Result<(), Error> {
        let path = self.record_path(&rec.name);
        let tmp = path.with_extension("tmp");
        let text = serde_json::to_string_pretty(rec).expect("records serialize");
        fs::write(&tmp, text).map_err(|e| Error::io("cannot write", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| Error::io("cannot write", &path, e))
    }

    /// The pod's own folder (the sidecar's bootstrap and log), made on first use and removed
    /// with the pod; readable by the proxy's uid.
    pub fn files_dir(&self, rec: &PodRecord) -> Result<PathBuf, Error> {
        let dir = self.pods_dir().join(format!("{}.d", rec.name));
        fs::create_dir_all(&dir).map_err(|e| Error::io("cannot create", &dir, e))?;
        Ok(dir)
    }

    /// Records a change to a pod (its processes, its registrations).
    pub fn update(&self, rec: &PodRecord) -> Result<(), Error> {
        let _lock = self.lock()?;
        self.write(rec)
    }

    /// Removes every pod whose owner is gone: stops its processes, deletes its network and
    /// hosts file, and hands the record to `cleanup` (for its registrations) before deleting
    /// the state file. Returns the records removed.
    pub fn reap(&self, mut cleanup: impl FnMut(&PodRecord)) -> Result<Vec<PodRecord>, Error> {
        let _lock = self.lock()?;
        let stale: Vec<PodRecord> = self.list().into_iter().filter(|r| r.is_stale()).collect();
        for rec in &stale {
            tracing::info!(pod = %rec.name, owner = rec.owner.pid, "removing what a stopped run left");
            self.teardown(rec);
            cleanup(rec);
            let _ = fs::remove_file(self.record_path(&rec.name));
        }
        Ok(stale)
    }

    /// Makes a pod `name` (`NAME.NAMESPACE`) owned by this process: an address, and for
    /// [`PodKind::Namespace`] the bridge (if missing), a namespace and a veth. The record is
    /// written before anything is made, so a crash half-way is cleaned up by [`Pods::reap`].
    pub fn create(&self, name: &str, kind: PodKind) -> Result<PodRecord, Error> {
        self.create_at(name, kind, None)
    }

    /// [`Pods::create`] for a [`PodKind::Host`] pod at `ip` (no address is allocated).
    pub fn create_host(&self, name: &str, ip: Ipv4Addr) -> Result<PodRecord, Error> {
        self.create_at(name, PodKind::Host, Some(ip))
    }

    fn create_at(
        &self,
        name: &str,
        kind: PodKind,
        given: Option<Ipv4Addr>,
    ) -> Result<PodRecord, Error> {
        let _lock = self.lock()?;
        let existing = self.list();
        if let Some(other) = existing.iter().find(|r| r.name == name) {
            if !other.is_stale() {
                return Err(Error::NameTaken {
                    name: name.to_string(),
                    pid: other.owner.pid,
                });
            }
            self.teardown(other);
            let _ = fs::remove_file(self.record_path(&other.name));
        }
        let range = match kind {
            PodKind::Namespace => self.range,
            PodKind::Loopback | PodKind::Host => self.loopback,
        };
        let taken = |ip: &Ipv4Addr| existing.iter().any(|r| r.name != name && r.ip == *ip);
        let mut free = range.pod_addresses().filter(|ip| !taken(ip));
        let exhausted = || Error::Exhausted {
            range: range.to_string(),
        };
        let ip = match given {
            Some(ip) => ip,
            None => free.next().ok_or_else(exhausted)?,
        };
        let rec = PodRecord {
            name: name.to_string(),
            kind,
            ip,
            netns: (kind == PodKind::Namespace).then(|| format!("strait-{name}")),
            veth: (kind == PodKind::Namespace).then(|| format!("st{:08x}", u32::from(ip))),
            owner: ProcId::current(),
            processes: Vec::new(),
            registrations: serde_json::Value::Null,
        };
        self.write(&rec)?;
        if kind == PodKind::Namespace
            && let Err(e) = self.build_network(&rec)
        {
            self.teardown(&rec);
            let _ = fs::remove_file(self.record_path(name));
            return Err(e);
        }
        Ok(rec)
    }

    fn ensure_bridge(&self) -> Result<(), Error> {
        // A bridge without an address of its own takes the lowest of its ports' and changes it
        // as pods come and go; every pod's neighbour entry for the gateway would then point at
        // a MAC nobody answers to until it expires (tens of seconds without the host).
        let mac = mac_of(self.range.gateway());
        if run_tool("ip", &["link", "show", "dev", &self.bridge]).is_ok() {
            // One made by an earlier version: give it its address now (3: NET_ADDR_SET).
            let assigned = format!("/sys/class/net/{}/addr_assign_type", self.bridge);
            if fs::read_to_string(&assigned).is_ok_and(|t| t.trim() != "3") {
                run_tool("ip", &["link", "set", &self.bridge, "address", &mac])?;
                tracing::info!(bridge = %self.bridge, %mac, "bridge address set");
            }
            return Ok(());
        }
        let gw = format!("{}/{}", self.range.gateway(), self.range.prefix_len());
        run_tool(
            "ip",
            &[
                "link",
                "add",
                &self.bridge,
                "address",
                &mac,
                "type",
                "bridge",
            ],
        )?;
        run_tool("ip", &["addr", "add", &gw, "dev", &self.bridge])?;
        run_tool("ip", &["link", "set", &self.bridge, "up"])?;
        tracing::info!(bridge = %self.bridge, %gw, %mac, "bridge created");
        Ok(())
    }

    fn build_network(&self, rec: &PodRecord) -> Result<(), Error> {
        let (Some(ns), Some(veth)) = (&rec.netns, &rec.veth) else {
            return Ok(());
        };
        self.ensure_bridge()?;
        let addr = format!("{}/{}", rec.ip, self.range.prefix_len());
        let gw = self.range.gateway().to_string();
        run_tool("ip", &["netns", "add", ns])?;
        run_tool(
            "ip",
            &[
                "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ],
        )?;
        run_tool("ip", &["link", "set", veth, "master", &self.bridge, "up"])?;
        // The pod's MAC follows from its address, so a pod started again at the same address
        // (after a crash) answers to the MAC its peers have cached: with a random one, their
        // connections to it go nowhere until their neighbour entries expire.
        let mac = mac_of(rec.ip);
        run_tool("ip", &["-n", ns, "link", "set", "eth0", "address", &mac])?;
        run_tool("ip", &["-n", ns, "addr", "add", &addr, "dev", "eth0"])?;
        run_tool("ip", &["-n", ns, "link", "set", "eth0", "up"])?;
        run_tool("ip", &["-n", ns, "link", "set", "lo", "up"])?;
        run_tool("ip", &["-n", ns, "route", "add", "default", "via", &gw])?;
        let etc = Path::new("/etc/netns").join(ns);
        fs::create_dir_all(&etc).map_err(|e| Error::io("cannot create", &etc, e))?;
        // `ip netns exec` bind-mounts every file here that exists in /etc.
        self.write_hosts(rec, "127.0.0.1\tlocalhost\n")?;
        tracing::info!(pod = %rec.name, %ns, ip = %rec.ip, "pod network created");
        Ok(())
    }

    /// Writes the pod's hosts file in place (the same inode, so a running pod sees it).
    pub fn write_hosts(&self, rec: &PodRecord, content: &str) -> Result<(), Error> {
        let Some(path) = rec.hosts_path() else {
            return Ok(());
        };
        use std::io::Write;
        // In place (the pod's /etc/hosts is a bind mount of this very file, so it cannot be
        // replaced by a rename), but never empty: the new text over the old, then the rest cut.
        // Truncating first would leave a moment in which a lookup finds no name and falls back
        // to DNS (a 5 s stall).
        let mut f = File::options()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("cannot write", &path, e))?;
        f.write_all(content.as_bytes())
            .and_then(|()| f.set_len(content.len() as u64))
            .map_err(|e| Error::io("cannot write", &path, e))
    }

    /// Installs Istio's capture rules in the pod's namespace (with `iptables-restore`, in one
    /// transaction).
    pub fn install_capture(&self, rec: &PodRecord, rules: &CaptureRules) -> Result<(), Error> {
        let Some(ns) = &rec.netns else {
            return Ok(());
        };
        run_tool_stdin(
            "ip",
            &["netns", "exec", ns, "iptables-restore", "--noflush"],
            Some(&rules.restore_input()),
        )?;
        Ok(())
    }

    /// Installs (`first`) or refreshes the kube-proxy-like rules of a pod without a sidecar.
    pub fn install_services(
        &self,
        rec: &PodRecord,
        ports: &[crate::ServicePort],
        first: bool,
    ) -> Result<(), Error> {
        let Some(ns) = &rec.netns else {
            return Ok(());
        };
        run_tool_stdin(
            "ip",
            &["netns", "exec", ns, "iptables-restore", "--noflush"],
            Some(&crate::services_restore_input(ports, first)),
        )?;
        Ok(())
    }

    /// Removes a pod this process owns: stops what still runs in it, deletes its network and
    /// its state file.
    pub fn remove(&self, rec: &PodRecord) -> Result<(), Error> {
        let _lock = self.lock()?;
        self.teardown(rec);
        let path = self.record_path(&rec.name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io("cannot remove", &path, e))
            }
            _ => Ok(()),
        }
    }

    /// Best effort: each step runs even if an earlier one failed, and logs what it could not do.
    fn teardown(&self, rec: &PodRecord) {
        for p in &rec.processes {
            terminate(*p, STOP_GRACE);
        }
        let files = self.pods_dir().join(format!("{}.d", rec.name));
        if files.exists()
            && let Err(e) = fs::remove_dir_all(&files)
        {
            tracing::warn!(path = %files.display(), error = %e, "cannot remove the pod's files");
        }
        if let Some(ns) = &rec.netns {
            // Anything else still in the namespace (an app's own children).
            if let Ok(pids) = run_tool("ip", &["netns", "pids", ns]) {
                for pid in pids.lines().filter_map(|l| l.trim().parse().ok()) {
                    if let Some(p) = ProcId::of(pid) {
                        terminate(p, STOP_GRACE);
                    }
                }
            }
            if let Err(e) = run_tool("ip", &["netns", "del", ns])
                && !e.to_string().contains("No such file")
            {
                tracing::warn!(%ns, error = %e, "cannot delete the network namespace");
            }
            let etc = Path::new("/etc/netns").join(ns);
            if etc.exists()
                && let Err(e) = fs::remove_dir_all(&etc)
            {
                tracing::warn!(path = %etc.display(), error = %e, "cannot remove the pod's /etc");
            }
        }
        if let Some(veth) = &rec.veth
            && run_tool("ip", &["link", "show", "dev", veth]).is_ok()
            && let Err(e) = run_tool("ip", &["link", "del", veth])
        {
            tracing::warn!(%veth, error = %e, "cannot delete the veth");
        }
    }
}

/// The MAC of an address in the pod range (the pods' and the bridge's): `0a:58` (locally
/// administered, unicast) and the address's four bytes, as OVN-Kubernetes does.
fn mac_of(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("0a:58:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_mac_follows_from_its_address() {
        assert_eq!(mac_of(Ipv4Addr::new(10, 44, 0, 1)), "0a:58:0a:2c:00:01");
        assert_eq!(mac_of(Ipv4Addr::new(10, 44, 1, 254)), "0a:58:0a:2c:01:fe");
    }

    fn pods(dir: &Path) -> Pods {
        Pods::new(dir, "strait-test0", "10.250.0.0/29".parse().unwrap())
    }

    #[test]
    fn loopback_pods_get_distinct_addresses_and_names() {
        let dir = tempfile::tempdir().unwrap();
        let p = pods(dir.path());
        let a = p.create("a.default", PodKind::Loopback).unwrap();
        let b = p.create("b.default", PodKind::Loopback).unwrap();
        assert_eq!(a.ip, Ipv4Addr::new(127, 44, 0, 2));
        assert_eq!(b.ip, Ipv4Addr::new(127, 44, 0, 3));
        // Each app has an address of its own, beside its sidecar's.
        assert_eq!(a.app_ip(), Some(Ipv4Addr::new(127, 45, 0, 2)));
        assert_eq!(b.app_ip(), Some(Ipv4Addr::new(127, 45, 0, 3)));
        assert!(a.netns.is_none() && a.hosts_path().is_none());
        // A live owner holds its name.
        let e = p.create("a.default", PodKind::Loopback).unwrap_err();
        assert!(e.to_string().contains("already running"), "{e}");
        // Removal frees the address for the next pod.
        p.remove(&a).unwrap();
        let c = p.create("c.default", PodKind::Loopback).unwrap();
        assert_eq!(c.ip, a.ip);
        let g = p
            .create_host("gw.default", Ipv4Addr::new(127, 0, 0, 1))
            .unwrap();
        assert_eq!(g.ip, Ipv4Addr::LOCALHOST);
        assert_eq!(p.list().len(), 3);
    }

    #[test]
    fn reap_removes_pods_whose_owner_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let p = pods(dir.path());
        let mut rec = p.create("dead.default", PodKind::Loopback).unwrap();
        let mut sleeper = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let child = ProcId::of(sleeper.id()).unwrap();
        rec.processes.push(child);
        // An owner that is no longer running.
        let mut gone = std::process::Command::new("true").spawn().unwrap();
        let gone_id = ProcId::of(gone.id()).unwrap_or(ProcId {
            pid: gone.id(),
            start: 0,
        });
        gone.wait().unwrap();
        rec.owner = gone_id;
        rec.registrations = serde_json::json!({"workloadentry": "default/dead"});
        p.update(&rec).unwrap();
        std::fs::write(p.files_dir(&rec).unwrap().join("proxy.log"), "x").unwrap();
        let live = p.create("live.default", PodKind::Loopback).unwrap();
        let reaper = std::thread::spawn(move || sleeper.wait());
        let mut cleaned = Vec::new();
        let removed = p.reap(|r| cleaned.push(r.registrations.clone())).unwrap();
        reaper.join().unwrap().unwrap();
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].name, "dead.default");
        assert_eq!(
            cleaned,
            [serde_json::json!({"workloadentry": "default/dead"})]
        );
        assert!(!alive(child), "the dead run's process was stopped");
        assert!(!dir.path().join("pods/dead.default.d").exists());
        assert_eq!(p.list(), vec![live]);
    }
}
