//! The local platform's pods, built with the system's own tools.
//!
//! A pod is a network namespace on a bridge (`strait0` by default) with a veth whose address
//! comes from a pod range (`10.44.0.0/16`; the bridge holds the first address, the gateway), a
//! hosts file that maps service names to their virtual IPs (`/etc/netns/NAME/hosts`, which
//! `ip netns exec` bind-mounts over `/etc/hosts`), and Istio's istio-init rules
//! ([`CaptureRules`]). Without root, a pod is only a loopback address of its own
//! (`127.44.0.0/16`).
//!
//! Everything runs through the real tools (`ip` from iproute2, `iptables-restore` with the nft
//! backend) as commands: no `unsafe`, and an error names the missing tool and the
//! `apt-get install` line. Every pod is recorded in a state file under the run directory
//! (`/run/strait` for root) with the processes that own it, so a later run can remove what a
//! killed one left: see [`Pods::reap`].

#![deny(rust_2018_idioms)]
#![forbid(unsafe_code)]

mod capture;
mod cmd;
mod hosts;
mod pods;
mod proc;
mod range;
mod services;

pub use capture::{CaptureRules, PROXY_GID, PROXY_UID};
pub use cmd::{Error, run_tool, run_tool_stdin};
pub use hosts::{HostsEntry, render_hosts};
pub use pods::{LOOPBACK_RANGE, PodKind, PodRecord, Pods};
pub use proc::{ProcId, alive, terminate};
pub use range::PodRange;
pub use services::{SERVICES_CHAIN, ServicePort, services_restore_input};
