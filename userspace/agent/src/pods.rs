//! Pod interfaces: the pod-facing TC program is attached to every host-side veth petrel-cni made
//! (named with its prefix), and the pins of veths that are gone are removed.
//!
//! A veth is attached as soon as the kernel announces it (`notifications`: RTNLGRP_LINK), and
//! a periodic scan (`attach_new`) catches whatever a lost notification missed. petrel-cni also
//! attaches the pinned programs itself at ADD, so a pod made while the agent is down is wired
//! too; the agent then adopts those links.

use std::collections::HashSet;

use petrel_datapath::Datapath;
use petrel_netlink::{Event, Events};

use crate::routing::VXLAN_IFNAME;

/// The pod interfaces attached so far.
#[derive(Debug)]
pub struct PodInterfaces {
    prefix: String,
    attached: HashSet<String>,
}

impl PodInterfaces {
    pub fn new(prefix: String) -> Self {
        PodInterfaces {
            prefix,
            attached: HashSet::new(),
        }
    }

    /// Whether `name` is a pod's host-side veth.
    pub fn is_pod(&self, name: &str) -> bool {
        // The overlay device shares petrel's prefix but is a node interface (external side).
        name.starts_with(&self.prefix) && name != VXLAN_IFNAME
    }

    /// Attaches to the pod veths that appeared since the last call (the scan). Returns how many
    /// were attached.
    pub fn attach_new(&mut self, dp: &mut Datapath) -> usize {
        let Ok(ifaces) = nix::net::if_::if_nameindex() else {
            return 0;
        };
        let names: HashSet<String> = ifaces
            .iter()
            .map(|i| i.name().to_string_lossy().into_owned())
            .filter(|n| self.is_pod(n))
            .collect();
        self.attached.retain(|n| names.contains(n));
        for gone in dp.prune_pod_links(&names) {
            tracing::info!(iface = %gone, "pod interface gone: its link pin removed");
        }
        let mut n = 0;
        for name in names {
            if self.attach(dp, &name) {
                n += 1;
            }
        }
        n
    }

    /// Attaches to pod veth `name` unless done already; true when it was attached now.
    pub fn attach(&mut self, dp: &mut Datapath, name: &str) -> bool {
        if !self.is_pod(name) || self.attached.contains(name) {
            return false;
        }
        match dp.attach_tc_ingress(name) {
            Ok(how) => {
                tracing::info!(iface = %name, ?how, "pod interface attached");
                self.attached.insert(name.to_string());
                true
            }
            Err(e) => {
                tracing::warn!(iface = %name, error = %e, "attaching to pod interface failed");
                false
            }
        }
    }

    /// Forgets a veth that went (a veth made again under the same name is attached again).
    pub fn gone(&mut self, name: &str) {
        self.attached.remove(name);
    }
}

/// Link and address notifications, from a thread of their own (the socket blocks), in the
/// network namespace of the calling thread. The receiver closes if the socket fails; the scan
/// keeps wiring pods then.
pub fn notifications() -> std::io::Result<tokio::sync::mpsc::UnboundedReceiver<Event>> {
    // Subscribed here, before the first scan, so no veth falls between the two.
    let mut events = Events::subscribe().map_err(petrel_netlink::NetlinkError::into_io)?;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("link-events".into())
        .spawn(move || {
            loop {
                match events.receive() {
                    Ok(batch) => {
                        for ev in batch {
                            if tx.send(ev).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "link notifications stopped: pod interfaces are found by the periodic scan only");
                        return;
                    }
                }
            }
        })?;
    Ok(rx)
}
