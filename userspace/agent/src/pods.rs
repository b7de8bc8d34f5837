//! Pod interfaces: the pod-facing TC program is attached to every host-side veth petrel-cni made
//! (named with its prefix), and the pins of veths that are gone are removed.

use std::collections::HashSet;

use petrel_datapath::Datapath;

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

    /// Attaches to the pod veths that appeared since the last call.
    pub fn attach_new(&mut self, dp: &mut Datapath) {
        let Ok(ifaces) = nix::net::if_::if_nameindex() else {
            return;
        };
        let names: HashSet<String> = ifaces
            .iter()
            .map(|i| i.name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&self.prefix))
            // The overlay device shares petrel's prefix but is a node interface (external side).
            .filter(|n| n != VXLAN_IFNAME)
            .collect();
        self.attached.retain(|n| names.contains(n));
        for gone in dp.prune_pod_links(&names) {
            tracing::info!(iface = %gone, "pod interface gone: its link pin removed");
        }
        for name in names {
            if self.attached.contains(&name) {
                continue;
            }
            match dp.attach_tc_ingress(&name) {
                Ok(how) => {
                    tracing::info!(iface = %name, ?how, "pod interface attached");
                    self.attached.insert(name);
                }
                Err(e) => {
                    tracing::warn!(iface = %name, error = %e, "attaching to pod interface failed")
                }
            }
        }
    }
}
