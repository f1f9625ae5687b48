use super::plan::*;
use crate::cluster::cib::config::{FencingLevel, Node, Primitive, Resource};
use crate::cluster::cib::Configuration;

/// (id, agent, params) of one stonith device.
type Dev<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);

fn cfg(devices: &[Dev]) -> Configuration {
    let mut c = Configuration::default();
    for (i, n) in ["n1", "n2", "n3"].iter().enumerate() {
        c.nodes.push(Node::new(n, i as u8));
    }
    for (id, agent, params) in devices {
        let mut p = Primitive::new(id, &format!("stonith:{agent}")).unwrap();
        for (k, v) in *params {
            p = p.param(k, v);
        }
        c.resources.push(p.into());
    }
    c
}

fn devices(p: &FencePlan) -> Vec<Vec<&str>> {
    p.levels.iter().map(|l| l.devices()).collect()
}

#[test]
fn host_list_decides_which_devices_fence_a_node() {
    let c = cfg(&[
        (
            "ipmi1",
            "fence_ipmilan",
            &[("ip", "10.0.0.1"), ("pcmk_host_list", "n1")],
        ),
        (
            "ipmi2",
            "fence_ipmilan",
            &[("ip", "10.0.0.2"), ("pcmk_host_list", "n2,n3")],
        ),
        ("pdu", "fence_apc", &[("ip", "10.0.0.9"), ("pcmk_host_list", "n3 n1")]),
    ]);
    let p = plan(&c, "n1", FenceAction::Off).unwrap();
    assert!(!p.from_topology);
    // One level per capable device, in configuration order: the first success wins.
    assert_eq!(devices(&p), vec![vec!["ipmi1"], vec!["pdu"]]);
    assert_eq!(p.levels.iter().map(|l| l.index).collect::<Vec<_>>(), vec![1, 2]);
    let call = &p.levels[0].calls[0];
    assert_eq!(call.agent, "fence_ipmilan");
    assert_eq!(call.check, HostCheck::None);
    assert_eq!(call.plug, "n1");
    // action first, the plug, nodename, then the device's params without pcmk_*.
    assert_eq!(call.stdin, vec!["action=off", "plug=n1", "nodename=n1", "ip=10.0.0.1"]);
    assert!(
        p.skipped
            .iter()
            .any(|s| s.starts_with("ipmi2: n1 is not in its pcmk_host_list")),
        "{:?}",
        p.skipped
    );

    let p3 = plan(&c, "n3", FenceAction::Reboot).unwrap();
    assert_eq!(devices(&p3), vec![vec!["ipmi2"], vec!["pdu"]]);
    assert_eq!(p3.levels[0].calls[0].action, "reboot");
}

#[test]
fn host_map_gives_the_plug_and_overrides_apply() {
    let c = cfg(&[(
        "pdu",
        "fence_apc_snmp",
        &[
            ("ip", "pdu.example"),
            ("pcmk_host_map", "n1:4;n2=5,6 n3:7"),
            ("pcmk_off_action", "reboot"),
            ("pcmk_reboot_timeout", "90s"),
            ("pcmk_off_timeout", "20s"),
            ("pcmk_delay_base", "2s"),
            ("pcmk_host_argument", "port"),
            ("action", "reboot"),
        ],
    )]);
    let p = plan(&c, "n2", FenceAction::Off).unwrap();
    let call = &p.levels[0].calls[0];
    assert_eq!(call.plug, "5,6");
    assert_eq!(call.action, "reboot", "pcmk_off_action maps off to the agent's reboot");
    assert_eq!(
        call.timeout_ms,
        Some(20_000),
        "the timeout is the fencing action's, pcmk_off_timeout"
    );
    assert_eq!(call.delay_ms, 2_000);
    // The configured `action` param is never passed: the action is the cluster's.
    assert_eq!(
        call.stdin,
        vec!["action=reboot", "port=5,6", "nodename=n2", "ip=pdu.example"]
    );
    assert_eq!(
        call.stdin_for("list", false, "n2"),
        vec!["action=list", "ip=pdu.example"],
        "list is not about one plug"
    );
    let on = plan(&c, "n1", FenceAction::On).unwrap();
    assert_eq!(on.levels[0].calls[0].delay_ms, 0, "no delay for unfencing");
    assert_eq!(
        on.levels[0].calls[0].stdin[..2],
        ["action=on".to_string(), "port=4".to_string()]
    );

    assert_eq!(
        parse_host_map("a:1; b:2\nc=x").unwrap(),
        vec![
            ("a".into(), "1".into()),
            ("b".into(), "2".into()),
            ("c".into(), "x".into())
        ]
    );
    for bad in ["a", "a:", ":1", "a:1;b"] {
        assert!(parse_host_map(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn host_check_modes() {
    let c = cfg(&[
        // No list or map: the agent's list decides at run time.
        ("dyn", "fence_virsh", &[("ip", "h")]),
        ("st", "fence_x", &[("pcmk_host_check", "status")]),
        (
            "any",
            "fence_y",
            &[("pcmk_host_check", "none"), ("pcmk_host_map", "n2:b")],
        ),
        // static-list without a list can fence nobody.
        ("nolist", "fence_z", &[("pcmk_host_check", "static-list")]),
        ("badcheck", "fence_z", &[("pcmk_host_check", "sometimes")]),
        ("badmap", "fence_z", &[("pcmk_host_map", "n1")]),
        ("newline", "fence_z", &[("passwd", "a\naction=on")]),
        ("off", "fence_z", &[("pcmk_host_list", "n1")]),
    ]);
    let mut c = c;
    if let Some(Resource::Primitive(p)) = c.resources.iter_mut().find(|r| r.id() == "off") {
        p.meta.insert("target-role".into(), "Stopped".into());
    }
    let p = plan(&c, "n1", FenceAction::Off).unwrap();
    assert_eq!(devices(&p), vec![vec!["dyn"], vec!["st"], vec!["any"]]);
    let checks: Vec<HostCheck> = p.levels.iter().map(|l| l.calls[0].check).collect();
    assert_eq!(checks, vec![HostCheck::DynamicList, HostCheck::Status, HostCheck::None]);
    assert!(
        p.levels[0].calls[0].check_defaulted,
        "nothing configured: status may stand in for list"
    );
    let explicit = cfg(&[("d", "fence_v", &[("pcmk_host_check", "dynamic-list")])]);
    let e = plan(&explicit, "n1", FenceAction::Off).unwrap();
    assert!(
        !e.levels[0].calls[0].check_defaulted,
        "an explicit dynamic-list needs the list"
    );
    assert_eq!(
        p.levels[2].calls[0].plug, "n1",
        "a node missing from the map is its own plug"
    );
    let skipped = p.skipped.join("\n");
    for want in [
        "nolist: pcmk_host_check=static-list but neither",
        "badcheck: pcmk_host_check=\"sometimes\" is not valid",
        "badmap: pcmk_host_map entry \"n1\" is not NODE:PLUG",
        "newline: parameter \"passwd\" cannot be passed",
        "off: disabled (target-role=Stopped)",
    ] {
        assert!(skipped.contains(want), "missing {want:?} in\n{skipped}");
    }
    let p2 = plan(&c, "n2", FenceAction::Off).unwrap();
    assert_eq!(p2.levels[2].calls[0].plug, "b");
}

#[test]
fn no_device_is_a_clear_error() {
    let none = cfg(&[]);
    let e = plan(&none, "n1", FenceAction::Reboot).unwrap_err();
    assert_eq!(
        e,
        "cannot fence \"n1\": no fencing device can fence it (no stonith: device is configured)"
    );
    let other = cfg(&[("ipmi2", "fence_ipmilan", &[("pcmk_host_list", "n2")])]);
    let e = plan(&other, "n1", FenceAction::Off).unwrap_err();
    assert!(
        e.contains("ipmi2: n1 is not in its pcmk_host_list or pcmk_host_map"),
        "{e}"
    );
    let e = plan(&other, "n9", FenceAction::Off).unwrap_err();
    assert!(e.contains("not a configured node"), "{e}");
    // An ocf resource is never a fencing device.
    let mut with_ocf = cfg(&[]);
    with_ocf
        .resources
        .push(Primitive::new("d", "ocf:heartbeat:Dummy").unwrap().into());
    assert!(plan(&with_ocf, "n1", FenceAction::Off).is_err());
}

#[test]
fn topology_levels_in_index_order() {
    let mut c = cfg(&[
        ("ipmi", "fence_ipmilan", &[("pcmk_host_list", "n1")]),
        ("psu1", "fence_apc", &[("pcmk_host_map", "n1:1")]),
        ("psu2", "fence_apc", &[("pcmk_host_map", "n1:11")]),
        ("other", "fence_virsh", &[("pcmk_host_list", "n2")]),
    ]);
    c.fencing_topology = vec![
        FencingLevel::new("n1", 2, &["psu1", "psu2"]),
        FencingLevel::new("n1", 1, &["ipmi"]),
        // The administrator may name a device whose host list does not include the node.
        FencingLevel::new("n1", 3, &["other"]),
        FencingLevel::new("n2", 1, &["other"]),
    ];
    let p = plan(&c, "n1", FenceAction::Off).unwrap();
    assert!(p.from_topology);
    assert_eq!(devices(&p), vec![vec!["ipmi"], vec!["psu1", "psu2"], vec!["other"]]);
    assert_eq!(p.levels.iter().map(|l| l.index).collect::<Vec<_>>(), vec![1, 2, 3]);
    let plugs: Vec<&str> = p.levels[1].calls.iter().map(|c| c.plug.as_str()).collect();
    assert_eq!(plugs, vec!["1", "11"]);
    assert!(p
        .levels
        .iter()
        .flat_map(|l| &l.calls)
        .all(|c| c.check == HostCheck::None && c.required));

    // Reboot through a level of two power supplies: both off, then both on; the on half may
    // fail without failing the level.
    let r = plan(&c, "n1", FenceAction::Reboot).unwrap();
    let steps: Vec<(&str, &str, bool)> = r.levels[1]
        .calls
        .iter()
        .map(|c| (c.device.as_str(), c.action.as_str(), c.required))
        .collect();
    assert_eq!(
        steps,
        vec![
            ("psu1", "off", true),
            ("psu2", "off", true),
            ("psu1", "on", false),
            ("psu2", "on", false)
        ]
    );
    assert_eq!(r.levels[0].calls.len(), 1);
    assert_eq!(r.levels[0].calls[0].action, "reboot");

    // A node without levels falls back to every capable device.
    let p3 = plan(&c, "n3", FenceAction::Off);
    assert!(p3.is_err(), "{p3:?}");
    c.resources.push(
        Primitive::new("all", "stonith:fence_z")
            .unwrap()
            .param("pcmk_host_check", "none")
            .into(),
    );
    assert_eq!(devices(&plan(&c, "n3", FenceAction::Off).unwrap()), vec![vec!["all"]]);

    // A level naming a missing device or a non-stonith resource (which validation refuses) is
    // passed over with a note; with no other level, that is the error.
    c.resources
        .push(Primitive::new("dummy", "ocf:heartbeat:Dummy").unwrap().into());
    c.fencing_topology
        .insert(0, FencingLevel::new("n2", 2, &["ghost", "dummy"]));
    let p = plan(&c, "n2", FenceAction::Off).unwrap();
    assert_eq!(devices(&p), vec![vec!["other"]]);
    assert_eq!(
        p.skipped,
        ["level 2: device \"ghost\" is not configured, \"dummy\" runs ocf:heartbeat:Dummy, not a stonith: agent"]
    );
    c.fencing_topology.retain(|l| l.index != 1 || l.target != "n2");
    let e = plan(&c, "n2", FenceAction::Off).unwrap_err();
    assert!(
        e.starts_with("cannot fence \"n2\": no fencing level can be used (level 2: device \"ghost\""),
        "{e}"
    );
    c.fencing_topology.retain(|l| l.target != "n2");
    c.resources.pop();

    // A level with a disabled device is left out.
    if let Some(Resource::Primitive(p)) = c.resources.iter_mut().find(|r| r.id() == "psu2") {
        p.meta.insert("target-role".into(), "stopped".into());
    }
    let p = plan(&c, "n1", FenceAction::Off).unwrap();
    assert_eq!(devices(&p), vec![vec!["ipmi"], vec!["other"]]);
    assert!(
        p.skipped.iter().any(|s| s.contains("level 2: psu2: disabled")),
        "{:?}",
        p.skipped
    );
}

#[test]
fn actions_and_timeouts_from_the_configuration() {
    let mut c = cfg(&[]);
    assert_eq!(FenceAction::from_config(&c), FenceAction::Reboot);
    assert_eq!(stonith_timeout_ms(&c), 60_000);
    c.properties.insert("fencing-action".into(), "poweroff".into());
    c.properties.insert("stonith-timeout".into(), "30s".into());
    assert_eq!(FenceAction::from_config(&c), FenceAction::Off);
    assert_eq!(stonith_timeout_ms(&c), 30_000);
    assert!("explode".parse::<FenceAction>().is_err());
    assert_eq!("Off".parse::<FenceAction>().unwrap().to_string(), "off");
}

#[test]
fn device_params_are_checked_for_the_cib() {
    let ok = Primitive::new("d", "stonith:fence_x")
        .unwrap()
        .param("pcmk_host_map", "n1:1;n2:2")
        .param("pcmk_off_timeout", "30s")
        .param("pcmk_delay_max", "5s")
        .param("pcmk_host_check", "dynamic-list");
    assert!(check_device_params(&ok).is_empty(), "{:?}", check_device_params(&ok));
    let bad = Primitive::new("d", "stonith:fence_x")
        .unwrap()
        .param("pcmk_host_map", "n1")
        .param("pcmk_reboot_timeout", "soon")
        .param("pcmk_delay_base", "-1")
        .param("pcmk_host_check", "maybe")
        .param("pcmk_off_action", "power off")
        .param("passwd", "a\nb");
    let errs = check_device_params(&bad).join("\n");
    for want in [
        "pcmk_host_map entry \"n1\"",
        "pcmk_reboot_timeout: \"soon\" is not a duration",
        "pcmk_delay_base: \"-1\" is not a duration",
        "pcmk_host_check=\"maybe\" is not valid",
        "pcmk_off_action=\"power off\" is not an agent action",
        "parameter \"passwd\" cannot be passed",
    ] {
        assert!(errs.contains(want), "missing {want:?} in\n{errs}");
    }
    // The CIB refuses such a device.
    let mut c = cfg(&[]);
    c.resources.push(bad.into());
    let e = crate::cluster::cib::validate::validate(&c, &Default::default()).unwrap_err();
    assert!(
        e.iter()
            .any(|e| e.to_string().contains("resource \"d\": pcmk_host_check")),
        "{e:?}"
    );
}

#[test]
fn delays_and_check_timeouts() {
    let c = cfg(&[
        (
            "dyn",
            "fence_x",
            &[
                ("pcmk_delay_base", "1s"),
                ("pcmk_delay_max", "3s"),
                ("pcmk_list_timeout", "5s"),
            ],
        ),
        (
            "st",
            "fence_y",
            &[("pcmk_host_check", "status"), ("pcmk_status_timeout", "7s")],
        ),
    ]);
    let p = plan(&c, "n1", FenceAction::Off).unwrap();
    let (d, s) = (&p.levels[0].calls[0], &p.levels[1].calls[0]);
    assert_eq!(
        (d.delay_ms, d.delay_max_ms, d.check_timeout_ms),
        (1000, 3000, Some(5000))
    );
    assert_eq!((s.delay_ms, s.delay_max_ms, s.check_timeout_ms), (0, 0, Some(7000)));
}
