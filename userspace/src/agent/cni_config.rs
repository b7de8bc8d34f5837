//! What petrel-cni needs from the agent: the node's pod CIDR (from the Node's `spec.podCIDR(s)`)
//! in the file the plugin reads when its config has no `podCIDR`, and the CNI conflist that makes
//! the container runtime call petrel-cni. Both written atomically, only when they change.

use std::{io, path::Path};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Node;

/// The node's IPv4 pod CIDR, if the Node has one.
pub fn pod_cidr(node: &Node) -> Option<Ipv4Net> {
    let spec = node.spec.as_ref()?;
    let all = spec.pod_cidrs.iter().flatten().chain(spec.pod_cidr.iter());
    all.filter_map(|c| c.parse::<Ipv4Net>().ok()).next()
}

/// The conflist: petrel-cni first (reading the pod CIDR from `pod_cidr_file`), then the
/// reference portmap plugin for hostPort.
pub fn conflist(pod_cidr_file: &Path, mtu: u32) -> String {
    let v = serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "petrel",
        "plugins": [
            {"type": "petrel-cni", "podCIDRFile": pod_cidr_file, "mtu": mtu},
            {"type": "portmap", "capabilities": {"portMappings": true}}
        ]
    });
    serde_json::to_string_pretty(&v).expect("serialisable") + "\n"
}

/// Writes `contents` to `path` through a temporary file and a rename, unless it is already there.
/// Returns whether it wrote.
pub fn write_if_changed(path: &Path, contents: &str) -> io::Result<bool> {
    if std::fs::read_to_string(path).is_ok_and(|c| c == contents) {
        return Ok(false);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents)?;
    std::fs::rename(&tmp, path)?;
    Ok(true)
}

/// Installs the CNI plugin binary `src` as `<dir>/petrel-cni`: copied to a temporary file in
/// `dir`, made executable and synced, then renamed over the old one, so a runtime calling the
/// plugin meanwhile runs either the old binary or the new one, never half a file.
pub fn install_binary(src: &Path, dir: &Path) -> io::Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(dir)?;
    let dst = dir.join("petrel-cni");
    let tmp = dir.join(".petrel-cni.tmp");
    std::fs::copy(src, &tmp)?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &dst)?;
    Ok(dst)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::NodeSpec;

    use super::*;

    #[test]
    fn pod_cidr_prefers_the_first_ipv4_of_pod_cidrs() {
        let node = Node {
            spec: Some(NodeSpec {
                pod_cidr: Some("fd00::/64".into()),
                pod_cidrs: Some(vec!["fd00::/64".into(), "10.244.3.0/24".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            pod_cidr(&node).map(|c| c.to_string()),
            Some("10.244.3.0/24".into())
        );
        assert_eq!(pod_cidr(&Node::default()), None);
    }

    #[test]
    fn install_binary_replaces_atomically_and_leaves_no_temporary() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let src = dir.path().join("new");
        std::fs::write(&src, b"v2").expect("src");
        let bin = dir.path().join("opt/cni/bin");
        std::fs::create_dir_all(&bin).expect("bin dir");
        std::fs::write(bin.join("petrel-cni"), b"v1").expect("old");
        let dst = install_binary(&src, &bin).expect("install");
        assert_eq!(std::fs::read(&dst).expect("read"), b"v2");
        let mode = std::fs::metadata(&dst).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o755);
        let names: Vec<_> = std::fs::read_dir(&bin)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["petrel-cni"]);
        assert!(install_binary(&dir.path().join("missing"), &bin).is_err());
    }

    #[test]
    fn writes_only_on_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("a/pod-cidr");
        assert!(write_if_changed(&p, "10.244.3.0/24\n").expect("write"));
        assert!(!write_if_changed(&p, "10.244.3.0/24\n").expect("same"));
        assert!(write_if_changed(&p, "10.244.4.0/24\n").expect("changed"));
        let c: serde_json::Value = serde_json::from_str(&conflist(&p, 1450)).expect("json");
        assert_eq!(c["plugins"][0]["type"], "petrel-cni");
        assert_eq!(c["plugins"][0]["podCIDRFile"], p.display().to_string());
    }
}
