use super::config::*;
use super::status::{FenceEvent, OpRecord, OpStatus, FENCING_HISTORY_MAX};
use super::*;

fn v(admin_epoch: u32, epoch: u64, num_updates: u64) -> CibVersion {
    CibVersion {
        admin_epoch,
        epoch,
        num_updates,
    }
}

fn op(name: &str, interval: &str, timeout: &str) -> Operation {
    Operation::new(name, interval, Some(timeout)).unwrap()
}

/// The seed's HA MariaDB configuration (seeds/004, the block starting `node node1.magedu.com`),
/// built the way `hbcrm configure load` will build it.
fn seed_004() -> Configuration {
    let mut c = Configuration::default();
    for (i, name) in ["node1.magedu.com", "node2.magedu.com"].into_iter().enumerate() {
        let mut n = Node::new(name, i as u8);
        n.attributes.insert("standby".into(), "off".into());
        c.nodes.push(n);
    }
    let mydata = Primitive::new("mydata", "Filesystem")
        .unwrap()
        .param("device", "/dev/drbd0")
        .param("directory", "/mydata")
        .param("fstype", "ext4")
        .op(op("monitor", "20s", "40s"))
        .op(op("start", "0", "60s"))
        .op(op("stop", "0", "60s"));
    let myip = Primitive::new("myip", "IPaddr")
        .unwrap()
        .param("ip", "172.16.100.27")
        .op(op("monitor", "10s", "20s"));
    let myserver = Primitive::new("myserver", "lsb:mysqld")
        .unwrap()
        .op(op("monitor", "20s", "20s"));
    let mystor = Primitive::new("mystor", "ocf:linbit:drbd")
        .unwrap()
        .param("drbd_resource", "mystore")
        .op(op("monitor", "10s", "20s").with_role("Master".parse().unwrap()))
        .op(op("monitor", "20s", "20s").with_role("Slave".parse().unwrap()))
        .op(op("start", "0", "240s"))
        .op(op("stop", "0", "100s"));
    let ms = CloneSet::promotable("ms_mystor", "mystor")
        .meta("clone-max", "2")
        .meta("clone-node-max", "1")
        .meta("master-max", "1")
        .meta("master-node-max", "1")
        .meta("notify", "true");
    c.resources = vec![mydata.into(), myip.into(), myserver.into(), mystor.into(), ms.into()];
    let inf = Score::INFINITY;
    c.constraints = vec![
        Constraint::Colocation(
            Colocation::new("mydata_with_ms_mystor_master", inf, "mydata", "ms_mystor").with_role(Role::Promoted),
        ),
        Constraint::Colocation(
            Colocation::new("myip_with_ms_mystor_master", inf, "myip", "ms_mystor").with_role(Role::Promoted),
        ),
        Constraint::Colocation(Colocation::new("myserver_with_mydata", inf, "myserver", "mydata")),
        Constraint::Order(Order::new(
            "mydata_after_ms_mystor_master",
            OrderKind::Mandatory,
            ("ms_mystor", Action::Promote),
            ("mydata", Action::Start),
        )),
        Constraint::Order(Order::new(
            "myserver_after_mydata",
            OrderKind::Mandatory,
            ("mydata", Action::Start),
            ("myserver", Action::Start),
        )),
        Constraint::Order(Order::new(
            "myserver_after_myip",
            OrderKind::Mandatory,
            ("myip", Action::Start),
            ("myserver", Action::Start),
        )),
    ];
    for (k, val) in [
        ("dc-version", "1.1.11-97629de"),
        ("cluster-infrastructure", "classic openais (with plugin)"),
        ("expected-quorum-votes", "2"),
        ("stonith-enabled", "false"),
        ("no-quorum-policy", "ignore"),
        ("default-resource-stickiness", "50"),
        ("last-lrm-refresh", "1432892808"),
    ] {
        c.properties.insert(k.into(), val.into());
    }
    c
}

fn seed_cib() -> Cib {
    Cib::with_configuration(seed_004()).unwrap()
}

/// The `ValidationError`s of an invalid configuration.
fn errors_of(c: Configuration) -> Vec<ValidationError> {
    match validate::validate(&c, &Status::default()) {
        Ok(()) => panic!("configuration unexpectedly valid"),
        Err(e) => e,
    }
}

#[test]
fn seed_004_configuration_is_valid_and_reads_back() {
    let cib = seed_cib();
    assert_eq!(cib.version(), v(0, 1, 0));
    let c = &cib.configuration;
    assert!(!c.stonith_enabled());
    assert_eq!(c.no_quorum_policy(), crate::cluster::quorum::NoQuorumPolicy::Ignore);
    assert_eq!(c.default_resource_stickiness(), Score::new(50));
    assert!(c.symmetric_cluster());
    assert!(!c.node("node1.magedu.com").unwrap().standby());
    let Some(Resource::Clone(ms)) = c.resource("ms_mystor") else {
        panic!("ms_mystor is not a clone")
    };
    assert!(ms.is_promotable() && ms.notify());
    assert_eq!(
        (
            ms.clone_max(),
            ms.clone_node_max(),
            ms.promoted_max(),
            ms.promoted_node_max()
        ),
        (Some(2), 1, 1, 1)
    );
    assert_eq!(
        c.promotable_ancestor("mystor").map(|m| m.id.as_str()),
        Some("ms_mystor")
    );
    assert!(c.promotable_ancestor("mydata").is_none());
    assert_eq!(c.primitives_of("ms_mystor")[0].agent.to_string(), "ocf:linbit:drbd");
    let Some(Resource::Primitive(mydata)) = c.resource("mydata") else {
        panic!()
    };
    assert_eq!(mydata.agent.to_string(), "ocf:heartbeat:Filesystem");
    assert_eq!(mydata.ops[0].interval_ms, 20_000);
    assert_eq!(mydata.ops[0].timeout_ms, Some(40_000));
}

#[test]
fn json_round_trip_is_exact() {
    let mut cib = seed_cib();
    // Some of everything: a group, a rule, status with history.
    cib.apply(&[
        CibOp::AddResource {
            resource: Primitive::new("vip2", "ocf:heartbeat:IPaddr2")
                .unwrap()
                .param("ip", "10.0.0.9")
                .into(),
        },
        CibOp::AddResource {
            resource: Primitive::new("dummy", "ocf:pacemaker:Dummy")
                .unwrap()
                .meta("target-role", "Stopped")
                .into(),
        },
        CibOp::AddResource {
            resource: Group::new("g", &["vip2", "dummy"]).into(),
        },
        CibOp::AddConstraint {
            constraint: Constraint::Location(Location {
                id: "ban-promoted".into(),
                rsc: "ms_mystor".into(),
                role: Some(Role::Promoted),
                target: LocationTarget::Rules(vec![Rule {
                    score: Score::NEG_INFINITY,
                    boolean_op: BoolOp::And,
                    expressions: vec![Expression::new("#uname", CmpOp::Ne, Some("node1.magedu.com"))],
                }]),
            }),
        },
        CibOp::AddConstraint {
            constraint: Constraint::Location(Location::on_node("prefer1", "g", Score::new(100), "node1.magedu.com")),
        },
        CibOp::SetRscDefault {
            name: "migration-threshold".into(),
            value: Some("3".into()),
        },
    ])
    .unwrap();
    cib.apply(&[
        CibOp::SetNodeState {
            node: "node1.magedu.com".into(),
            member: true,
            incarnation: Some(7),
            last_seen_unix_ms: Some(1_700_000_000_000),
        },
        CibOp::RecordOperation {
            node: "node1.magedu.com".into(),
            rsc: "mydata".into(),
            agent: "ocf:heartbeat:Filesystem".into(),
            record: OpRecord {
                action: Action::Start,
                interval_ms: 0,
                call_id: 3,
                rc: 0,
                status: OpStatus::Done,
                last_rc_change_unix_ms: 1_700_000_000_000,
                exec_time_ms: 120,
                queue_time_ms: 0,
                transition: Some("0:1:7:abc".into()),
                exit_reason: String::new(),
            },
        },
    ])
    .unwrap();
    let json = cib.to_json();
    assert!(json.starts_with("{\"format_version\":1,"), "{json}");
    let back = Cib::from_json(&json).unwrap();
    assert_eq!(back, cib);
    assert_eq!(back.digest(), cib.digest());
    assert_eq!(Cib::from_json(&cib.to_json_pretty()).unwrap(), cib);
    // Scores read as Pacemaker writes them.
    assert!(json.contains("\"score\":\"INFINITY\""));
    assert!(json.contains("\"score\":\"-INFINITY\""));
    assert!(json.contains("\"score\":100"));
    // A document must fit a heartbeat payload.
    assert!(json.len() < 60 * 1024);
}

#[test]
fn json_rejects_bad_input_clearly() {
    let good = seed_cib().to_json();
    let future = good.replacen("\"format_version\":1", "\"format_version\":2", 1);
    assert_eq!(Cib::from_json(&future), Err(CibError::FormatVersion { found: 2 }));
    assert!(Cib::from_json(&future)
        .unwrap_err()
        .to_string()
        .contains("upgrade this node"));
    let unknown = good.replacen("\"epoch\":1,", "\"epoch\":1,\"surprise\":true,", 1);
    assert!(matches!(Cib::from_json(&unknown), Err(CibError::Decode(e)) if e.contains("surprise")));
    assert!(matches!(Cib::from_json("{}"), Err(CibError::Decode(_))));
    assert!(matches!(
        Cib::from_json(&good[..good.len() / 2]),
        Err(CibError::Decode(_))
    ));
    // Well-formed JSON that breaks referential integrity is refused too.
    let dangling = good.replacen("\"with_rsc\":\"mydata\"", "\"with_rsc\":\"nosuch\"", 1);
    assert!(matches!(Cib::from_json(&dangling), Err(CibError::Invalid(_))));
}

#[test]
fn ops_bump_the_right_counter() {
    let mut cib = seed_cib();
    let base = cib.version();
    // Status: num_updates.
    let a = cib
        .apply(&[CibOp::SetTransientAttribute {
            node: "node2.magedu.com".into(),
            name: "master-mystor".into(),
            value: Some("10000".into()),
        }])
        .unwrap();
    assert_eq!((a.version, a.changed), (v(0, 1, 1), true));
    // The same again changes nothing and bumps nothing.
    let a = cib
        .apply(&[CibOp::SetTransientAttribute {
            node: "node2.magedu.com".into(),
            name: "master-mystor".into(),
            value: Some("10000".into()),
        }])
        .unwrap();
    assert_eq!((a.version, a.changed), (v(0, 1, 1), false));
    // Configuration: epoch, num_updates reset.
    let a = cib
        .apply(&[CibOp::SetStandby {
            node: "node2.magedu.com".into(),
            standby: true,
        }])
        .unwrap();
    assert_eq!(a.version, v(0, 2, 0));
    assert!(cib.configuration.node("node2.magedu.com").unwrap().standby());
    // A batch mixing both bumps epoch once.
    let a = cib
        .apply(&[
            CibOp::SetProperty {
                name: "stonith-enabled".into(),
                value: Some("true".into()),
            },
            CibOp::SetNodeMaintenance {
                node: "node1.magedu.com".into(),
                maintenance: true,
            },
            CibOp::SetNodeState {
                node: "node1.magedu.com".into(),
                member: true,
                incarnation: None,
                last_seen_unix_ms: None,
            },
        ])
        .unwrap();
    assert_eq!(a.version, v(0, 3, 0));
    assert!(cib.configuration.stonith_enabled() && cib.configuration.node("node1.magedu.com").unwrap().maintenance());
    // The administrator's override.
    assert_eq!(cib.apply(&[CibOp::BumpAdminEpoch]).unwrap().version, v(1, 4, 0));
    assert!(cib.version() > base);
    // target-role through SetResourceMeta, and deleting it again.
    cib.apply(&[CibOp::SetResourceMeta {
        id: "myserver".into(),
        name: "target-role".into(),
        value: Some("Stopped".into()),
    }])
    .unwrap();
    assert_eq!(
        cib.configuration.resource("myserver").unwrap().target_role(),
        Role::Stopped
    );
    cib.apply(&[CibOp::SetResourceMeta {
        id: "myserver".into(),
        name: "target-role".into(),
        value: None,
    }])
    .unwrap();
    assert_eq!(
        cib.configuration.resource("myserver").unwrap().target_role(),
        Role::Started
    );
    assert_eq!(cib.version(), v(1, 6, 0));
}

#[test]
fn a_failing_batch_changes_nothing() {
    let mut cib = seed_cib();
    let before = cib.clone();
    // The first op is fine, the second refers to nothing: neither is applied.
    let err = cib
        .apply(&[
            CibOp::SetProperty {
                name: "symmetric-cluster".into(),
                value: Some("false".into()),
            },
            CibOp::AddConstraint {
                constraint: Constraint::Location(Location::on_node("l", "nosuch", Score::INFINITY, "node1.magedu.com")),
            },
        ])
        .unwrap_err();
    assert!(err.to_string().contains("\"nosuch\", which is not configured"), "{err}");
    assert_eq!(cib, before);
    // An op that cannot apply at all names its position.
    let err = cib
        .apply(&[
            CibOp::SetProperty {
                name: "symmetric-cluster".into(),
                value: Some("false".into()),
            },
            CibOp::DeleteConstraint { id: "nope".into() },
        ])
        .unwrap_err();
    assert_eq!(
        err,
        CibError::Rejected {
            op: 1,
            reason: "no constraint \"nope\" to delete".into()
        }
    );
    assert_eq!(cib, before);
    // A bad value for an interpreted option.
    let err = cib
        .apply(&[CibOp::SetProperty {
            name: "no-quorum-policy".into(),
            value: Some("panic".into()),
        }])
        .unwrap_err();
    assert!(err.to_string().contains("no-quorum-policy=\"panic\""), "{err}");
    assert_eq!(cib, before);
}

#[test]
fn delete_resource_refuses_or_cascades() {
    let mut cib = seed_cib();
    let err = cib
        .apply(&[CibOp::DeleteResource {
            id: "mystor".into(),
            cascade: false,
        }])
        .unwrap_err();
    assert!(
        err.to_string().contains("still used by promotable clone \"ms_mystor\""),
        "{err}"
    );
    // Cascade: the clone goes, and every constraint naming it.
    cib.apply(&[CibOp::DeleteResource {
        id: "mystor".into(),
        cascade: true,
    }])
    .unwrap();
    let c = &cib.configuration;
    assert!(c.resource("ms_mystor").is_none() && c.resource("mystor").is_none());
    assert_eq!(
        c.constraints.iter().map(|c| c.id()).collect::<Vec<_>>(),
        ["myserver_with_mydata", "myserver_after_mydata", "myserver_after_myip"]
    );
    // A group member: the group shrinks, then disappears with its last member.
    cib.apply(&[CibOp::AddResource {
        resource: Group::new("g", &["myip", "myserver"]).into(),
    }])
    .unwrap();
    cib.apply(&[CibOp::DeleteResource {
        id: "myip".into(),
        cascade: true,
    }])
    .unwrap();
    assert!(matches!(cib.configuration.resource("g"), Some(Resource::Group(g)) if g.members == ["myserver"]));
    cib.apply(&[CibOp::DeleteResource {
        id: "myserver".into(),
        cascade: true,
    }])
    .unwrap();
    assert!(cib.configuration.resource("g").is_none());
    assert!(cib.configuration.constraints.is_empty());
}

#[test]
fn node_and_history_ops() {
    let mut cib = seed_cib();
    let rec = |call_id, action, interval_ms, rc| OpRecord {
        action,
        interval_ms,
        call_id,
        rc,
        status: OpStatus::Done,
        last_rc_change_unix_ms: 0,
        exec_time_ms: 0,
        queue_time_ms: 0,
        transition: None,
        exit_reason: String::new(),
    };
    let record = |r: OpRecord| CibOp::RecordOperation {
        node: "node1.magedu.com".into(),
        rsc: "myip".into(),
        agent: "ocf:heartbeat:IPaddr".into(),
        record: r,
    };
    cib.apply(&[
        record(rec(1, Action::Start, 0, 0)),
        record(rec(2, Action::Monitor, 10_000, 0)),
        record(rec(3, Action::Monitor, 10_000, 7)),
    ])
    .unwrap();
    let h = &cib.status.nodes["node1.magedu.com"].resources["myip"];
    assert_eq!(h.ops.iter().map(|o| o.call_id).collect::<Vec<_>>(), [1, 3]);
    assert_eq!(h.last().unwrap().rc, 7);
    assert_eq!(cib.version(), v(0, 1, 1));
    // Unknown node in status.
    let err = cib
        .apply(&[CibOp::SetNodeState {
            node: "ghost".into(),
            member: true,
            incarnation: None,
            last_seen_unix_ms: None,
        }])
        .unwrap_err();
    assert!(matches!(err, CibError::Rejected { op: 0, .. }));
    // Cleanup forgets the history on every node.
    cib.apply(&[CibOp::ClearResourceHistory {
        rsc: "myip".into(),
        node: None,
    }])
    .unwrap();
    assert!(cib.status.nodes["node1.magedu.com"].resources.is_empty());
    // A third node joins the configuration; deleting node2 drops its status.
    cib.apply(&[
        CibOp::AddNode {
            node: Node::new("node3", 2),
        },
        CibOp::SetTransientAttribute {
            node: "node2.magedu.com".into(),
            name: "pingd".into(),
            value: Some("1".into()),
        },
    ])
    .unwrap();
    cib.apply(&[CibOp::DeleteNode {
        name: "node2.magedu.com".into(),
    }])
    .unwrap();
    assert!(!cib.status.nodes.contains_key("node2.magedu.com"));
    assert_eq!(
        cib.configuration.node_by_id(crate::cluster::NodeId(2)).unwrap().name,
        "node3"
    );
    // A node with a taken id.
    let err = cib
        .apply(&[CibOp::AddNode {
            node: Node::new("node4", 2),
        }])
        .unwrap_err();
    assert!(err.to_string().contains("both have id 2"), "{err}");
    // A location constraint keeps its node from being deleted.
    cib.apply(&[CibOp::AddConstraint {
        constraint: Constraint::Location(Location::on_node("pin", "myip", Score::new(10), "node3")),
    }])
    .unwrap();
    let err = cib.apply(&[CibOp::DeleteNode { name: "node3".into() }]).unwrap_err();
    assert!(
        err.to_string()
            .contains("names node \"node3\", which is not configured"),
        "{err}"
    );
}

#[test]
fn validation_errors_are_specific() {
    use ValidationError::*;
    // Each case: a change to the seed configuration and an error it must produce.
    type Case = (&'static str, fn(&mut Configuration), fn(&ValidationError) -> bool);
    let cases: Vec<Case> = vec![
        (
            "duplicate id across resources and constraints",
            |c| {
                c.constraints.push(Constraint::Colocation(Colocation::new(
                    "myip",
                    Score::ZERO,
                    "mydata",
                    "myserver",
                )))
            },
            |e| matches!(e, DuplicateId { id, .. } if id == "myip"),
        ),
        (
            "duplicate resource id",
            |c| c.resources.push(Primitive::new("mydata", "Dummy").unwrap().into()),
            |e| matches!(e, DuplicateId { id, first: "primitive", second: "primitive" } if id == "mydata"),
        ),
        (
            "bad id",
            |c| c.resources.push(Primitive::new("1bad id", "Dummy").unwrap().into()),
            |e| matches!(e, BadId { what: "resource", .. }),
        ),
        (
            "colocation with an unknown resource",
            |c| {
                c.constraints.push(Constraint::Colocation(Colocation::new(
                    "c",
                    Score::INFINITY,
                    "myip",
                    "web",
                )))
            },
            |e| matches!(e, UnknownResource { rsc, .. } if rsc == "web"),
        ),
        (
            "order on an unknown resource",
            |c| {
                c.constraints.push(Constraint::Order(Order::new(
                    "o",
                    OrderKind::Optional,
                    ("ghost", Action::Start),
                    ("myip", Action::Start),
                )))
            },
            |e| matches!(e, UnknownResource { rsc, .. } if rsc == "ghost"),
        ),
        (
            "location on an unknown node",
            |c| {
                c.constraints.push(Constraint::Location(Location::on_node(
                    "l",
                    "myip",
                    Score::new(5),
                    "node9",
                )))
            },
            |e| matches!(e, UnknownNode { node, .. } if node == "node9"),
        ),
        (
            "primitive in two groups",
            |c| {
                c.resources.push(Group::new("g1", &["myip", "myserver"]).into());
                c.resources.push(Group::new("g2", &["myserver"]).into());
            },
            |e| matches!(e, MemberOfTwoGroups { rsc, first, second } if rsc == "myserver" && first == "g1" && second == "g2"),
        ),
        (
            "group of a clone",
            |c| c.resources.push(Group::new("g", &["ms_mystor"]).into()),
            |e| {
                matches!(
                    e,
                    GroupMemberNotPrimitive {
                        kind: "promotable clone",
                        ..
                    }
                )
            },
        ),
        (
            "empty group",
            |c| c.resources.push(Group::new("g", &[]).into()),
            |e| matches!(e, EmptyGroup(g) if g == "g"),
        ),
        (
            "cloning a group member",
            |c| {
                c.resources.push(Group::new("g", &["myip"]).into());
                c.resources.push(CloneSet::new("cl", "myip").into());
            },
            |e| matches!(e, AlreadyContained { rsc, container, other } if rsc == "myip" && container == "g" && other == "cl"),
        ),
        (
            "clone of a clone",
            |c| c.resources.push(CloneSet::new("cl", "ms_mystor").into()),
            |e| matches!(e, CloneOfClone { .. }),
        ),
        (
            "promoted role on a plain primitive",
            |c| {
                c.constraints.push(Constraint::Colocation(
                    Colocation::new("c", Score::INFINITY, "myip", "mydata").with_role(Role::Promoted),
                ))
            },
            |e| matches!(e, NotPromotable { rsc, .. } if rsc == "mydata"),
        ),
        (
            "promote action on a plain primitive",
            |c| {
                c.constraints.push(Constraint::Order(Order::new(
                    "o",
                    OrderKind::Mandatory,
                    ("mydata", Action::Promote),
                    ("myip", Action::Start),
                )))
            },
            |e| matches!(e, NotPromotable { what, .. } if what == "action promote"),
        ),
        (
            "monitor in an order",
            |c| {
                c.constraints.push(Constraint::Order(Order::new(
                    "o",
                    OrderKind::Mandatory,
                    ("mydata", Action::Monitor),
                    ("myip", Action::Start),
                )))
            },
            |e| matches!(e, BadOrderAction { .. }),
        ),
        (
            "symmetrical serialize",
            |c| {
                let mut o = Order::new(
                    "o",
                    OrderKind::Serialize,
                    ("mydata", Action::Start),
                    ("myip", Action::Start),
                );
                o.symmetrical = Some(true);
                c.constraints.push(Constraint::Order(o));
            },
            |e| matches!(e, SerializeSymmetrical(_)),
        ),
        (
            "colocation with itself",
            |c| {
                c.constraints.push(Constraint::Colocation(Colocation::new(
                    "c",
                    Score::INFINITY,
                    "myip",
                    "myip",
                )))
            },
            |e| matches!(e, SelfReference { .. }),
        ),
        (
            "two monitors with one interval",
            |c| {
                if let Resource::Primitive(p) = &mut c.resources[3] {
                    p.ops[1].interval_ms = 10_000;
                }
            },
            |e| matches!(e, DuplicateOperation { rsc, interval_ms: 10_000, .. } if rsc == "mystor"),
        ),
        (
            "lsb with a provider",
            |c| {
                if let Resource::Primitive(p) = &mut c.resources[2] {
                    p.agent.provider = Some("heartbeat".into());
                }
            },
            |e| matches!(e, BadAgent { rsc, .. } if rsc == "myserver"),
        ),
        (
            "bad clone-max",
            |c| {
                if let Resource::Clone(m) = &mut c.resources[4] {
                    m.meta.insert("clone-max".into(), "two".into());
                }
            },
            |e| matches!(e, BadValue { name, .. } if name == "clone-max"),
        ),
        (
            "bad standby",
            |c| {
                c.nodes[0].attributes.insert("standby".into(), "maybe".into());
            },
            |e| matches!(e, BadValue { name, .. } if name == "standby"),
        ),
        (
            "bad stickiness",
            |c| {
                c.properties
                    .insert("default-resource-stickiness".into(), "sticky".into());
            },
            |e| matches!(e, BadValue { name, .. } if name == "default-resource-stickiness"),
        ),
        (
            "old and new option names disagree",
            |c| {
                c.properties.insert("fencing-enabled".into(), "true".into());
            },
            |e| matches!(e, ConflictingAlias { .. }),
        ),
        (
            "duplicate node name and id out of range",
            |c| c.nodes.push(Node::new("node1.magedu.com", 64)),
            |e| matches!(e, DuplicateNodeName(_)),
        ),
        (
            "node id out of range",
            |c| c.nodes.push(Node::new("node3", 64)),
            |e| matches!(e, NodeIdOutOfRange { id: 64, .. }),
        ),
        (
            "rule without expressions",
            |c| {
                c.constraints.push(Constraint::Location(Location {
                    id: "l".into(),
                    rsc: "myip".into(),
                    role: None,
                    target: LocationTarget::Rules(vec![Rule {
                        score: Score::INFINITY,
                        boolean_op: BoolOp::And,
                        expressions: vec![],
                    }]),
                }))
            },
            |e| matches!(e, EmptyRule(_)),
        ),
        (
            "defined with a value",
            |c| {
                c.constraints.push(Constraint::Location(Location {
                    id: "l".into(),
                    rsc: "myip".into(),
                    role: None,
                    target: LocationTarget::Rules(vec![Rule {
                        score: Score::INFINITY,
                        boolean_op: BoolOp::And,
                        expressions: vec![Expression::new("pingd", CmpOp::Defined, Some("1"))],
                    }]),
                }))
            },
            |e| matches!(e, BadExpression { .. }),
        ),
    ];
    for (name, change, want) in cases {
        let mut c = seed_004();
        change(&mut c);
        let errs = errors_of(c);
        assert!(errs.iter().any(want), "{name}: got {errs:?}");
        // Every message is a readable sentence.
        for e in &errs {
            assert!(e.to_string().len() > 20, "{name}: {e}");
        }
    }
    // Several problems are all reported.
    let mut c = seed_004();
    c.constraints
        .push(Constraint::Colocation(Colocation::new("c1", Score::INFINITY, "a", "b")));
    c.properties.insert("symmetric-cluster".into(), "perhaps".into());
    assert_eq!(errors_of(c).len(), 3);
}

#[test]
fn updates_replicate_and_refuse_a_wrong_base() {
    let mut dc = seed_cib();
    let mut member = dc.clone();
    let u = dc
        .apply_and_package(vec![CibOp::SetProperty {
            name: "no-quorum-policy".into(),
            value: Some("stop".into()),
        }])
        .unwrap()
        .unwrap();
    assert_eq!((u.base, u.result), (v(0, 1, 0), v(0, 2, 0)));
    // Shipped as a payload, read back, applied.
    let bytes = CibPayload::Update(u.clone()).encode();
    let CibPayload::Update(got) = CibPayload::decode(&bytes).unwrap() else {
        panic!("not an update")
    };
    member.apply_update(&got).unwrap();
    assert_eq!(member, dc);
    // Applying it twice: the base no longer matches.
    assert_eq!(
        member.apply_update(&got),
        Err(CibError::VersionMismatch {
            ours: v(0, 2, 0),
            base: v(0, 1, 0)
        })
    );
    // A member whose document diverged at the same version: digest mismatch, nothing changes.
    let mut diverged = seed_cib();
    diverged
        .configuration
        .properties
        .insert("batch-limit".into(), "5".into());
    let before = diverged.clone();
    assert_eq!(
        diverged.apply_update(&u),
        Err(CibError::DigestMismatch { version: v(0, 2, 0) })
    );
    assert_eq!(diverged, before);
    // A no-op produces nothing to ship.
    assert_eq!(
        dc.apply_and_package(vec![CibOp::SetProperty {
            name: "no-quorum-policy".into(),
            value: Some("stop".into()),
        }])
        .unwrap(),
        None
    );
    // The whole document as a payload.
    let doc = CibPayload::Document(Box::new(dc.clone()));
    assert_eq!(CibPayload::decode(&doc.encode()).unwrap(), doc);
    for bad in [
        &b"[]"[..],
        b"{\"document\":{},\"update\":{}}",
        b"{\"patch\":{\"format_version\":1}}",
        b"\xff",
    ] {
        assert!(matches!(CibPayload::decode(bad), Err(CibError::Decode(_))), "{bad:?}");
    }
    let future = doc.encode().iter().map(|&b| b as char).collect::<String>().replacen(
        "\"format_version\":1",
        "\"format_version\":9",
        1,
    );
    assert_eq!(
        CibPayload::decode(future.as_bytes()),
        Err(CibError::FormatVersion { found: 9 })
    );
}

#[test]
fn merge_from_keeps_the_quorate_document() {
    let mut quorate = seed_cib();
    let mut minority = quorate.clone();
    quorate
        .apply(&[CibOp::SetStandby {
            node: "node1.magedu.com".into(),
            standby: true,
        }])
        .unwrap();
    // The minority made many status updates: a higher version, but no quorum.
    for i in 0..5 {
        minority
            .apply(&[CibOp::SetTransientAttribute {
                node: "node2.magedu.com".into(),
                name: "pingd".into(),
                value: Some(i.to_string()),
            }])
            .unwrap();
    }
    assert!(minority.version() < quorate.version());
    minority
        .apply(&[CibOp::SetProperty {
            name: "batch-limit".into(),
            value: Some("3".into()),
        }])
        .unwrap();
    minority.apply(&[CibOp::BumpAdminEpoch]).unwrap();
    assert!(minority.version() > quorate.version());
    let q = quorate.clone();
    let d = minority.merge_from(false, q.clone(), true).unwrap();
    assert_eq!(
        d,
        MergeDecision {
            winner: Winner::Remote,
            reason: MergeReason::Quorum
        }
    );
    assert_eq!(minority, q);
    let d = quorate.merge_from(true, seed_cib(), false).unwrap();
    assert!(!d.take_remote());
    assert_eq!(quorate, q);
    // Equal quorum: newer wins; same document: identical.
    let mut old = seed_cib();
    assert_eq!(
        old.merge_from(true, q.clone(), true).unwrap().reason,
        MergeReason::NewerVersion
    );
    assert_eq!(old, q);
    assert_eq!(
        old.merge_from(true, q.clone(), true).unwrap().reason,
        MergeReason::Identical
    );
}

#[test]
fn every_op_round_trips_as_json() {
    let ops = vec![
        CibOp::RecordFencing {
            event: FenceEvent {
                target: "beta".into(),
                action: "off".into(),
                ok: true,
                device: Some("fence_ipmi".into()),
                delegate: "alpha".into(),
                detail: String::new(),
                completed_unix_ms: 7,
            },
        },
        CibOp::SetProperty {
            name: "stonith-enabled".into(),
            value: None,
        },
        CibOp::SetRscDefault {
            name: "resource-stickiness".into(),
            value: Some("100".into()),
        },
        CibOp::SetOpDefault {
            name: "timeout".into(),
            value: Some("20s".into()),
        },
        CibOp::AddNode {
            node: Node::new("gamma", 2),
        },
        CibOp::DeleteNode { name: "gamma".into() },
        CibOp::SetNodeAttribute {
            node: "alpha".into(),
            name: "site".into(),
            value: Some("a".into()),
        },
        CibOp::SetStandby {
            node: "alpha".into(),
            standby: true,
        },
        CibOp::SetNodeMaintenance {
            node: "alpha".into(),
            maintenance: false,
        },
        CibOp::AddResource {
            resource: CloneSet::new("c", "p").into(),
        },
        CibOp::ReplaceResource {
            resource: Group::new("g", &["a", "b"]).into(),
        },
        CibOp::DeleteResource {
            id: "g".into(),
            cascade: true,
        },
        CibOp::SetResourceMeta {
            id: "p".into(),
            name: "target-role".into(),
            value: Some("Stopped".into()),
        },
        CibOp::AddConstraint {
            constraint: Constraint::Colocation(Colocation::new("c", Score::NEG_INFINITY, "a", "b")),
        },
        CibOp::ReplaceConstraint {
            constraint: Constraint::Order(Order::new(
                "o",
                OrderKind::Optional,
                ("a", Action::Stop),
                ("b", Action::Stop),
            )),
        },
        CibOp::DeleteConstraint { id: "o".into() },
        CibOp::BumpAdminEpoch,
        CibOp::SetNodeState {
            node: "alpha".into(),
            member: false,
            incarnation: Some(1),
            last_seen_unix_ms: None,
        },
        CibOp::SetTransientAttribute {
            node: "alpha".into(),
            name: "fail-count-p#monitor_10000".into(),
            value: Some("INFINITY".into()),
        },
        CibOp::ClearResourceHistory {
            rsc: "p".into(),
            node: Some("alpha".into()),
        },
    ];
    let json = serde_json::to_string(&ops).unwrap();
    assert!(json.contains("{\"op\":\"bump_admin_epoch\"}"), "{json}");
    assert_eq!(serde_json::from_str::<Vec<CibOp>>(&json).unwrap(), ops);
    assert_eq!(ops.iter().filter(|o| !o.is_config()).count(), 4);
    assert!(
        serde_json::from_str::<CibOp>("{\"op\":\"set_property\",\"name\":\"x\",\"value\":null,\"extra\":1}").is_err()
    );
    assert!(serde_json::from_str::<CibOp>("{\"op\":\"format_disk\"}").is_err());
}

#[test]
fn seed_document_size() {
    let mut cib = seed_cib();
    for n in ["node1.magedu.com", "node2.magedu.com"] {
        cib.apply(&[CibOp::SetNodeState {
            node: n.into(),
            member: true,
            incarnation: Some(1_700_000_000_000_000_000),
            last_seen_unix_ms: Some(1_700_000_000_000),
        }])
        .unwrap();
    }
    let len = CibPayload::Document(Box::new(cib)).encode().len();
    println!("seed 004 document payload: {len} bytes");
    assert!(len < 8 * 1024, "{len}");
}

#[test]
fn fencing_topology_ops_validate_and_cascade() {
    let mut cib = seed_cib();
    assert!(
        !cib.to_json().contains("fencing_topology"),
        "an empty topology is not written"
    );
    let dev = |id: &str, host: &str| -> Resource {
        Primitive::new(id, "stonith:fence_ipmilan")
            .unwrap()
            .param("pcmk_host_list", host)
            .into()
    };
    let before = cib.version();
    cib.apply(&[
        CibOp::AddResource {
            resource: dev("ipmi1", "node1.magedu.com"),
        },
        CibOp::AddResource {
            resource: dev("pdu", "node1.magedu.com node2.magedu.com"),
        },
        CibOp::SetFencingTopology {
            levels: vec![
                FencingLevel::new("node1.magedu.com", 1, &["ipmi1"]),
                FencingLevel::new("node1.magedu.com", 2, &["pdu"]),
                FencingLevel::new("node2.magedu.com", 1, &["pdu"]),
            ],
        },
    ])
    .unwrap();
    assert_eq!(cib.version().epoch, before.epoch + 1, "a configuration change");
    let levels: Vec<u32> = cib
        .configuration
        .fencing_levels("node1.magedu.com")
        .iter()
        .map(|l| l.index)
        .collect();
    assert_eq!(levels, [1, 2]);
    // Round trip through JSON, and a document without the field still loads.
    let again = Cib::from_json(&cib.to_json()).unwrap();
    assert_eq!(again.configuration, cib.configuration);

    // A topology naming an unknown device is refused and changes nothing.
    let err = cib
        .apply(&[CibOp::SetFencingTopology {
            levels: vec![FencingLevel::new("node2.magedu.com", 1, &["nosuch"])],
        }])
        .unwrap_err();
    assert!(err.to_string().contains("names resource \"nosuch\""), "{err}");
    assert_eq!(cib.configuration.fencing_topology.len(), 3);

    // A device in a level is only deleted with cascade, which empties and drops its levels.
    let err = cib
        .apply(&[CibOp::DeleteResource {
            id: "pdu".into(),
            cascade: false,
        }])
        .unwrap_err();
    assert!(
        err.to_string().contains("fencing level 2 of \"node1.magedu.com\""),
        "{err}"
    );
    cib.apply(&[CibOp::DeleteResource {
        id: "pdu".into(),
        cascade: true,
    }])
    .unwrap();
    assert_eq!(
        cib.configuration.fencing_topology,
        vec![FencingLevel::new("node1.magedu.com", 1, &["ipmi1"])]
    );
    cib.apply(&[CibOp::SetFencingTopology { levels: vec![] }]).unwrap();
    assert!(cib.configuration.fencing_topology.is_empty());
    let op = CibOp::SetFencingTopology {
        levels: vec![FencingLevel::new("n", 1, &["a", "b"])],
    };
    let json = serde_json::to_string(&op).unwrap();
    assert_eq!(serde_json::from_str::<CibOp>(&json).unwrap(), op);
    assert!(op.is_config());
}

#[test]
fn fencing_history_is_capped_and_counts_failures_since_the_last_success_or_sighting() {
    let mut cib = seed_cib();
    let node = "node2.magedu.com";
    let ev = |ok: bool, at: u64| CibOp::RecordFencing {
        event: FenceEvent {
            target: node.into(),
            action: "reboot".into(),
            ok,
            device: None,
            delegate: "node1.magedu.com".into(),
            detail: String::new(),
            completed_unix_ms: at,
        },
    };
    let before = cib.version();
    cib.apply(&[ev(false, 10), ev(true, 20), ev(false, 30), ev(false, 40)])
        .unwrap();
    assert_eq!(cib.version().epoch, before.epoch, "a status change");
    assert_eq!(cib.status.fencing_failures(node), 2, "failures after the last success");
    assert_eq!(cib.status.fencing_failures("node1.magedu.com"), 0);
    // Seen alive after the failures: they no longer count.
    cib.apply(&[CibOp::SetNodeState {
        node: node.into(),
        member: false,
        incarnation: Some(1),
        last_seen_unix_ms: Some(35),
    }])
    .unwrap();
    assert_eq!(cib.status.fencing_failures(node), 1);
    let many: Vec<CibOp> = (0..FENCING_HISTORY_MAX as u64 + 5)
        .map(|i| ev(false, 100 + i))
        .collect();
    cib.apply(&many).unwrap();
    assert_eq!(cib.status.fencing.len(), FENCING_HISTORY_MAX, "oldest dropped first");
    assert_eq!(cib.status.fencing[0].completed_unix_ms, 105);
    let err = cib
        .apply(&[CibOp::RecordFencing {
            event: FenceEvent {
                target: "nobody".into(),
                ..match ev(true, 1) {
                    CibOp::RecordFencing { event } => event,
                    _ => unreachable!(),
                }
            },
        }])
        .unwrap_err();
    assert!(err.to_string().contains("nobody"), "{err}");
}
