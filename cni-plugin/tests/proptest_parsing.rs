//! No input makes config or environment parsing panic; every failure is a CNI error with a
//! spec code, and any error object printed is valid JSON.

use std::collections::HashMap;

use petrel_cni::{config::NetConf, env::Command};
use proptest::prelude::*;

fn any_env() -> impl Strategy<Value = HashMap<String, String>> {
    let keys = prop_oneof![
        Just("CNI_COMMAND".to_string()),
        Just("CNI_CONTAINERID".to_string()),
        Just("CNI_NETNS".to_string()),
        Just("CNI_IFNAME".to_string()),
        Just("CNI_ARGS".to_string()),
        Just("CNI_PATH".to_string()),
        ".{0,12}",
    ];
    let values = prop_oneof![
        Just("ADD".to_string()),
        Just("DEL".to_string()),
        Just("CHECK".to_string()),
        Just("GC".to_string()),
        Just("eth0".to_string()),
        Just("../../x".to_string()),
        ".{0,40}",
    ];
    proptest::collection::hash_map(keys, values, 0..7)
}

fn jsonish() -> impl Strategy<Value = String> {
    let field = prop_oneof![
        Just(r#""cniVersion":"1.1.0""#.to_string()),
        Just(r#""cniVersion":"0.3.1""#.to_string()),
        Just(r#""name":"n""#.to_string()),
        Just(r#""type":"petrel-cni""#.to_string()),
        "\"podCIDR\":\"[0-9./]{0,20}\"",
        "\"mtu\":-?[0-9]{1,12}",
        "\"dataDir\":\"[a-z/]{0,10}\"",
        Just(r#""prevResult":{"ips":[{"address":"x"}]}"#.to_string()),
        Just(r#""cni.dev/valid-attachments":[{"containerID":1}]"#.to_string()),
        ".{0,10}",
    ];
    proptest::collection::vec(field, 0..8).prop_map(|f| format!("{{{}}}", f.join(",")))
}

proptest! {
    #[test]
    fn env_parsing_never_panics(env in any_env()) {
        if let Err(e) = Command::from_env(&env) {
            prop_assert_eq!(e.code(), 4);
        }
    }

    #[test]
    fn config_parsing_never_panics(stdin in prop_oneof![jsonish(), ".{0,80}"]) {
        if let Err(e) = NetConf::parse(stdin.as_bytes()) {
            prop_assert!([1, 5, 6, 7].contains(&e.code()), "code {}", e.code());
            let obj: serde_json::Value = serde_json::from_str(&e.to_json("1.1.0")).unwrap();
            prop_assert_eq!(obj["code"].as_u64(), Some(u64::from(e.code())));
        }
    }

    #[test]
    fn version_and_bad_verbs_through_run_never_panic(env in any_env(), stdin in jsonish()) {
        // Only commands that touch no system state: VERSION, or anything that fails validation.
        let verb = env.get("CNI_COMMAND").cloned().unwrap_or_default();
        prop_assume!(!["ADD", "DEL", "CHECK", "GC", "STATUS"].contains(&verb.as_str()));
        let mut out = Vec::new();
        let code = petrel_cni::run(&env, stdin.as_bytes(), &mut out);
        let printed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        prop_assert!(code == 0 || printed.get("code").is_some());
    }
}
