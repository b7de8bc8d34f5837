//! The ADD result, printed in the shape of the config's cniVersion.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Only in 0.3.x / 0.4.0 results.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: serde_json::Value,
}

impl CniResult {
    /// Sets the version and the per-version fields (0.3.x/0.4.0 carry `"version": "4"` or
    /// `"6"` on ips, by the address's family).
    pub fn in_version(mut self, version: &str) -> CniResult {
        let legacy = version.starts_with("0.");
        for ip in &mut self.ips {
            let family = if ip.address.contains(':') { "6" } else { "4" };
            ip.version = legacy.then(|| family.to_string());
        }
        self.cni_version = version.to_string();
        if self.dns.is_null() {
            self.dns = serde_json::json!({});
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_versions_carry_ip_version() {
        let r = CniResult {
            ips: vec![IpConfig {
                version: None,
                address: "10.0.0.2/32".into(),
                gateway: None,
                interface: Some(1),
            }],
            ..Default::default()
        };
        let v = serde_json::to_value(r.clone().in_version("0.3.1")).unwrap();
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["cniVersion"], "0.3.1");
        let v = serde_json::to_value(r.clone().in_version("1.1.0")).unwrap();
        assert!(v["ips"][0].get("version").is_none());
        let mut dual = r;
        dual.ips.push(IpConfig {
            version: None,
            address: "fd00::2/128".into(),
            gateway: Some("fe80::1".into()),
            interface: Some(1),
        });
        let v = serde_json::to_value(dual.clone().in_version("0.4.0")).unwrap();
        assert_eq!(v["ips"][0]["version"], "4");
        assert_eq!(v["ips"][1]["version"], "6");
        let v = serde_json::to_value(dual.in_version("1.0.0")).unwrap();
        assert!(v["ips"][1].get("version").is_none());
    }
}
