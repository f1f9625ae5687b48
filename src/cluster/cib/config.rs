//! The configuration section of the CIB: nodes, cluster properties, defaults, resources and
//! constraints, in the shape of Pacemaker's CIB (and of crm shell's `configure show`).
//!
//! Resources are kept flat and by id, as crm shell writes them: a [`Group`] lists the ids of its
//! member primitives, a [`CloneSet`] names the id of the primitive or group it clones. All
//! attribute maps are `String -> String` as in the CIB; the ones the cluster interprets have typed
//! accessors here and are checked by [`super::validate`].

use super::score::Score;
use crate::cluster::NodeId;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

/// Name -> value attributes (params, meta attributes, properties, node attributes).
pub type Attrs = BTreeMap<String, String>;

/// Everything the administrator configures.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Configuration {
    /// Cluster options (`property cib-bootstrap-options: ...`), see [`Configuration::property`].
    #[serde(default)]
    pub properties: Attrs,
    /// Default meta attributes of every resource (`rsc_defaults`).
    #[serde(default)]
    pub rsc_defaults: Attrs,
    /// Default attributes of every operation (`op_defaults`).
    #[serde(default)]
    pub op_defaults: Attrs,
    #[serde(default)]
    pub nodes: Vec<Node>,
    /// Every resource by id, in configuration order.
    #[serde(default)]
    pub resources: Vec<Resource>,
    #[serde(default)]
    pub constraints: Vec<Constraint>,
    /// Fencing levels (`fencing_topology`), see [`FencingLevel`]. Absent from older CIBs and
    /// not written while empty, so documents without topology are unchanged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fencing_topology: Vec<FencingLevel>,
}

/// One fencing level (Pacemaker's `fencing-level`): to fence `target`, the levels with that
/// target are tried by ascending `index`; a level succeeds only when every device in it
/// succeeds. Devices are ids of `stonith:` primitives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FencingLevel {
    /// The node this level fences.
    pub target: String,
    /// 1..=9, unique per target; lower indexes are tried first.
    pub index: u32,
    /// Stonith resource ids, all of which must succeed.
    pub devices: Vec<String>,
}

impl FencingLevel {
    pub fn new(target: &str, index: u32, devices: &[&str]) -> FencingLevel {
        FencingLevel {
            target: target.to_string(),
            index,
            devices: devices.iter().map(|d| d.to_string()).collect(),
        }
    }
}

/// Pacemaker 3 names for options that Pacemaker 1/2 (and the seed) spell differently:
/// `(new, old)`. Either spelling is read; setting one is rejected if the other disagrees.
pub const PROPERTY_ALIASES: &[(&str, &str)] = &[
    ("fencing-enabled", "stonith-enabled"),
    ("fencing-action", "stonith-action"),
    ("fencing-timeout", "stonith-timeout"),
];

impl Configuration {
    /// A cluster option's raw value, under either of its names.
    pub fn property(&self, name: &str) -> Option<&str> {
        if let Some(v) = self.properties.get(name) {
            return Some(v);
        }
        PROPERTY_ALIASES
            .iter()
            .find_map(|&(a, b)| (a == name).then_some(b).or((b == name).then_some(a)))
            .and_then(|other| self.properties.get(other))
            .map(String::as_str)
    }

    /// `stonith-enabled` / `fencing-enabled`, default true.
    pub fn stonith_enabled(&self) -> bool {
        self.property("stonith-enabled").and_then(parse_bool).unwrap_or(true)
    }

    /// `no-quorum-policy`, default stop.
    pub fn no_quorum_policy(&self) -> crate::cluster::quorum::NoQuorumPolicy {
        self.property("no-quorum-policy")
            .and_then(|v| v.parse().ok())
            .unwrap_or_default()
    }

    /// `default-resource-stickiness` (deprecated in Pacemaker for `rsc_defaults
    /// resource-stickiness`, which wins when both are set), default 0.
    pub fn default_resource_stickiness(&self) -> Score {
        self.rsc_defaults
            .get("resource-stickiness")
            .or_else(|| self.properties.get("default-resource-stickiness"))
            .and_then(|v| v.parse().ok())
            .unwrap_or_default()
    }

    /// `symmetric-cluster` (resources may run anywhere unless banned), default true.
    pub fn symmetric_cluster(&self) -> bool {
        self.property("symmetric-cluster").and_then(parse_bool).unwrap_or(true)
    }

    /// `maintenance-mode`, default false.
    pub fn maintenance_mode(&self) -> bool {
        self.property("maintenance-mode").and_then(parse_bool).unwrap_or(false)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn node_by_id(&self, id: NodeId) -> Option<&Node> {
        self.nodes.iter().find(|n| n.id == id.0)
    }

    pub fn resource(&self, id: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.id() == id)
    }

    /// The fencing levels for `target`, by ascending index.
    pub fn fencing_levels(&self, target: &str) -> Vec<&FencingLevel> {
        let mut v: Vec<&FencingLevel> = self.fencing_topology.iter().filter(|l| l.target == target).collect();
        v.sort_by_key(|l| l.index);
        v
    }

    pub fn constraint(&self, id: &str) -> Option<&Constraint> {
        self.constraints.iter().find(|c| c.id() == id)
    }

    /// The group or clone that directly contains `id`, if any.
    pub fn parent_of(&self, id: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| match r {
            Resource::Group(g) => g.members.iter().any(|m| m == id),
            Resource::Clone(c) => c.child == id,
            Resource::Primitive(_) => false,
        })
    }

    /// The promotable clone `id` is, or sits inside (directly or through a group).
    pub fn promotable_ancestor(&self, id: &str) -> Option<&CloneSet> {
        let mut cur = self.resource(id)?;
        // At most three levels: primitive -> group -> clone.
        for _ in 0..3 {
            if let Resource::Clone(c) = cur {
                return c.is_promotable().then_some(c);
            }
            cur = self.parent_of(cur.id())?;
        }
        None
    }

    /// The primitives `id` stands for: itself, a group's members, a clone's child expanded.
    pub fn primitives_of(&self, id: &str) -> Vec<&Primitive> {
        match self.resource(id) {
            Some(Resource::Primitive(p)) => vec![p],
            Some(Resource::Group(g)) => g.members.iter().flat_map(|m| self.primitives_of(m)).collect(),
            Some(Resource::Clone(c)) if c.child != id => self.primitives_of(&c.child),
            _ => Vec::new(),
        }
    }
}

/// A configured cluster node (`node NAME attributes ...`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// The node's name (uname), as in `[cluster] nodes`.
    pub name: String,
    /// The membership layer's node id, `0..MAX_NODES`.
    pub id: u8,
    /// Permanent node attributes: `standby`, `maintenance`, and anything rules look at.
    #[serde(default)]
    pub attributes: Attrs,
}

impl Node {
    pub fn new(name: &str, id: u8) -> Node {
        Node {
            name: name.to_string(),
            id,
            attributes: Attrs::new(),
        }
    }

    pub fn node_id(&self) -> NodeId {
        NodeId(self.id)
    }

    /// `standby` (the node may run no resources), default off.
    pub fn standby(&self) -> bool {
        self.attributes
            .get("standby")
            .and_then(|v| parse_bool(v))
            .unwrap_or(false)
    }

    /// `maintenance` (resources on the node are unmanaged), default off.
    pub fn maintenance(&self) -> bool {
        self.attributes
            .get("maintenance")
            .and_then(|v| parse_bool(v))
            .unwrap_or(false)
    }
}

/// A resource definition: a primitive, a group of primitives, or a clone of either.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Resource {
    Primitive(Primitive),
    Group(Group),
    Clone(CloneSet),
}

impl Resource {
    pub fn id(&self) -> &str {
        match self {
            Resource::Primitive(p) => &p.id,
            Resource::Group(g) => &g.id,
            Resource::Clone(c) => &c.id,
        }
    }

    pub fn meta(&self) -> &Attrs {
        match self {
            Resource::Primitive(p) => &p.meta,
            Resource::Group(g) => &g.meta,
            Resource::Clone(c) => &c.meta,
        }
    }

    pub fn meta_mut(&mut self) -> &mut Attrs {
        match self {
            Resource::Primitive(p) => &mut p.meta,
            Resource::Group(g) => &mut g.meta,
            Resource::Clone(c) => &mut c.meta,
        }
    }

    /// `primitive`, `group`, `clone` or `promotable clone`, for messages.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Resource::Primitive(_) => "primitive",
            Resource::Group(_) => "group",
            Resource::Clone(c) if c.is_promotable() => "promotable clone",
            Resource::Clone(_) => "clone",
        }
    }

    /// `target-role`, default Started.
    pub fn target_role(&self) -> Role {
        self.meta()
            .get("target-role")
            .and_then(|v| v.parse().ok())
            .unwrap_or(Role::Started)
    }

    /// `is-managed`, default true.
    pub fn is_managed(&self) -> bool {
        self.meta()
            .get("is-managed")
            .and_then(|v| parse_bool(v))
            .unwrap_or(true)
    }
}

impl From<Primitive> for Resource {
    fn from(p: Primitive) -> Resource {
        Resource::Primitive(p)
    }
}

impl From<Group> for Resource {
    fn from(g: Group) -> Resource {
        Resource::Group(g)
    }
}

impl From<CloneSet> for Resource {
    fn from(c: CloneSet) -> Resource {
        Resource::Clone(c)
    }
}

/// `primitive ID CLASS:PROVIDER:TYPE params ... meta ... op ...`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Primitive {
    pub id: String,
    pub agent: Agent,
    /// Instance attributes, passed to the agent as `OCF_RESKEY_<name>`.
    #[serde(default)]
    pub params: Attrs,
    /// Meta attributes: `target-role`, `resource-stickiness`, `migration-threshold`, ...
    #[serde(default)]
    pub meta: Attrs,
    #[serde(default)]
    pub ops: Vec<Operation>,
}

impl Primitive {
    /// A primitive with no params, meta or operations; `agent` as [`Agent::parse`] reads it.
    pub fn new(id: &str, agent: &str) -> Result<Primitive, String> {
        Ok(Primitive {
            id: id.to_string(),
            agent: Agent::parse(agent)?,
            params: Attrs::new(),
            meta: Attrs::new(),
            ops: Vec::new(),
        })
    }

    pub fn param(mut self, k: &str, v: &str) -> Primitive {
        self.params.insert(k.to_string(), v.to_string());
        self
    }

    pub fn meta(mut self, k: &str, v: &str) -> Primitive {
        self.meta.insert(k.to_string(), v.to_string());
        self
    }

    pub fn op(mut self, op: Operation) -> Primitive {
        self.ops.push(op);
        self
    }
}

/// The standard (class) of a resource agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ResourceClass {
    Ocf,
    Lsb,
    Stonith,
    Systemd,
}

impl ResourceClass {
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceClass::Ocf => "ocf",
            ResourceClass::Lsb => "lsb",
            ResourceClass::Stonith => "stonith",
            ResourceClass::Systemd => "systemd",
        }
    }
}

impl FromStr for ResourceClass {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "ocf" => Ok(ResourceClass::Ocf),
            "lsb" => Ok(ResourceClass::Lsb),
            "stonith" => Ok(ResourceClass::Stonith),
            "systemd" => Ok(ResourceClass::Systemd),
            _ => Err(format!(
                "{s:?} is not a resource class: expected ocf, lsb, stonith or systemd"
            )),
        }
    }
}

/// Which agent runs a primitive: `ocf:heartbeat:IPaddr2`, `lsb:mysqld`, `stonith:fence_xvm`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub class: ResourceClass,
    /// Only for `ocf` (e.g. `heartbeat`, `linbit`, `hablock`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// The agent's name (`type` in the CIB).
    #[serde(rename = "type")]
    pub kind: String,
}

impl Agent {
    /// Parses crm shell's agent spec. A bare name (`Filesystem`) is `ocf:heartbeat:NAME`, as in
    /// crm shell; `ocf:NAME` is `ocf:heartbeat:NAME`.
    pub fn parse(s: &str) -> Result<Agent, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(format!("{s:?} is not a resource agent: expected CLASS:[PROVIDER:]TYPE"));
        }
        let (class, provider, kind) = match parts.as_slice() {
            [t] => (ResourceClass::Ocf, Some("heartbeat"), *t),
            [c, t] => {
                let class: ResourceClass = c.parse()?;
                (class, (class == ResourceClass::Ocf).then_some("heartbeat"), *t)
            }
            [c, p, t] => (c.parse()?, Some(*p), *t),
            _ => return Err(format!("{s:?} is not a resource agent: expected CLASS:[PROVIDER:]TYPE")),
        };
        Ok(Agent {
            class,
            provider: provider.map(str::to_string),
            kind: kind.to_string(),
        })
    }
}

impl fmt::Display for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.provider {
            Some(p) => write!(f, "{}:{}:{}", self.class.as_str(), p, self.kind),
            None => write!(f, "{}:{}", self.class.as_str(), self.kind),
        }
    }
}

/// A resource action: operation names and order constraint actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Start,
    Stop,
    Monitor,
    Promote,
    Demote,
    Notify,
    #[serde(rename = "migrate_to")]
    MigrateTo,
    #[serde(rename = "migrate_from")]
    MigrateFrom,
    Reload,
    ReloadAgent,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Monitor => "monitor",
            Action::Promote => "promote",
            Action::Demote => "demote",
            Action::Notify => "notify",
            Action::MigrateTo => "migrate_to",
            Action::MigrateFrom => "migrate_from",
            Action::Reload => "reload",
            Action::ReloadAgent => "reload-agent",
        }
    }

    /// Whether an order constraint may name it (Pacemaker: start, stop, promote, demote).
    pub fn orderable(self) -> bool {
        matches!(self, Action::Start | Action::Stop | Action::Promote | Action::Demote)
    }
}

impl FromStr for Action {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        const ALL: [Action; 10] = [
            Action::Start,
            Action::Stop,
            Action::Monitor,
            Action::Promote,
            Action::Demote,
            Action::Notify,
            Action::MigrateTo,
            Action::MigrateFrom,
            Action::Reload,
            Action::ReloadAgent,
        ];
        ALL.into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| format!("{s:?} is not a resource action: expected start, stop, monitor, promote, demote, notify, migrate_to, migrate_from, reload or reload-agent"))
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A resource role. `Master`/`Slave` (Pacemaker 1.x, the seed) read as `Promoted`/`Unpromoted`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Role {
    Stopped,
    Started,
    Unpromoted,
    Promoted,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Stopped => "Stopped",
            Role::Started => "Started",
            Role::Unpromoted => "Unpromoted",
            Role::Promoted => "Promoted",
        }
    }

    /// Only meaningful for promotable clones.
    pub fn needs_promotable(self) -> bool {
        matches!(self, Role::Promoted | Role::Unpromoted)
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "stopped" => Ok(Role::Stopped),
            "started" => Ok(Role::Started),
            "unpromoted" | "slave" => Ok(Role::Unpromoted),
            "promoted" | "master" => Ok(Role::Promoted),
            _ => Err(format!(
                "{s:?} is not a role: expected Stopped, Started, Unpromoted (Slave) or Promoted (Master)"
            )),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `op NAME interval=.. timeout=.. role=.. [on-fail=.. ...]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Operation {
    pub name: Action,
    /// 0 for one-shot operations (start, stop, ...); recurring monitors have an interval.
    #[serde(default)]
    pub interval_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// The role a recurring monitor applies to (promotable clones run one per role).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Other operation attributes: `on-fail`, `start-delay`, `OCF_CHECK_LEVEL`, ...
    #[serde(default, skip_serializing_if = "Attrs::is_empty")]
    pub attrs: Attrs,
}

impl Operation {
    /// An operation with Pacemaker duration strings, e.g. `("monitor", "20s", Some("40s"))`.
    pub fn new(name: &str, interval: &str, timeout: Option<&str>) -> Result<Operation, String> {
        Ok(Operation {
            name: name.parse()?,
            interval_ms: parse_duration_ms(interval)?,
            timeout_ms: timeout.map(parse_duration_ms).transpose()?,
            role: None,
            attrs: Attrs::new(),
        })
    }

    pub fn with_role(mut self, role: Role) -> Operation {
        self.role = Some(role);
        self
    }
}

/// `group ID MEMBER... [meta ...]`: primitives started in order and kept together.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    pub id: String,
    /// Primitive ids, in start order.
    pub members: Vec<String>,
    #[serde(default)]
    pub meta: Attrs,
}

impl Group {
    pub fn new(id: &str, members: &[&str]) -> Group {
        Group {
            id: id.to_string(),
            members: members.iter().map(|m| m.to_string()).collect(),
            meta: Attrs::new(),
        }
    }
}

/// `clone ID CHILD meta ...` or, with `promotable=true`, `ms ID CHILD meta ...`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneSet {
    pub id: String,
    /// The primitive or group cloned.
    pub child: String,
    /// `promotable`, `clone-max`, `clone-node-max`, `promoted-max` (`master-max`),
    /// `promoted-node-max` (`master-node-max`), `notify`, `interleave`, `globally-unique`, ...
    #[serde(default)]
    pub meta: Attrs,
}

impl CloneSet {
    pub fn new(id: &str, child: &str) -> CloneSet {
        CloneSet {
            id: id.to_string(),
            child: child.to_string(),
            meta: Attrs::new(),
        }
    }

    /// crm shell's `ms ID CHILD`: a clone with `promotable=true`.
    pub fn promotable(id: &str, child: &str) -> CloneSet {
        CloneSet::new(id, child).meta("promotable", "true")
    }

    pub fn meta(mut self, k: &str, v: &str) -> CloneSet {
        self.meta.insert(k.to_string(), v.to_string());
        self
    }

    fn get(&self, names: &[&str]) -> Option<&str> {
        names.iter().find_map(|n| self.meta.get(*n)).map(String::as_str)
    }

    pub fn is_promotable(&self) -> bool {
        self.get(&["promotable"]).and_then(parse_bool).unwrap_or(false)
    }

    /// `clone-max`; `None` means "one per node".
    pub fn clone_max(&self) -> Option<u32> {
        self.get(&["clone-max"]).and_then(|v| v.parse().ok())
    }

    /// `clone-node-max`, default 1.
    pub fn clone_node_max(&self) -> u32 {
        self.get(&["clone-node-max"]).and_then(|v| v.parse().ok()).unwrap_or(1)
    }

    /// `promoted-max` (or `master-max`), default 1.
    pub fn promoted_max(&self) -> u32 {
        self.get(&["promoted-max", "master-max"])
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
    }

    /// `promoted-node-max` (or `master-node-max`), default 1.
    pub fn promoted_node_max(&self) -> u32 {
        self.get(&["promoted-node-max", "master-node-max"])
            .and_then(|v| v.parse().ok())
            .unwrap_or(1)
    }

    /// `notify`, default false.
    pub fn notify(&self) -> bool {
        self.get(&["notify"]).and_then(parse_bool).unwrap_or(false)
    }

    /// `interleave`, default false.
    pub fn interleave(&self) -> bool {
        self.get(&["interleave"]).and_then(parse_bool).unwrap_or(false)
    }

    /// `globally-unique`, default false.
    pub fn globally_unique(&self) -> bool {
        self.get(&["globally-unique"]).and_then(parse_bool).unwrap_or(false)
    }
}

/// A placement, colocation or ordering rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Constraint {
    Location(Location),
    Colocation(Colocation),
    Order(Order),
}

impl Constraint {
    pub fn id(&self) -> &str {
        match self {
            Constraint::Location(c) => &c.id,
            Constraint::Colocation(c) => &c.id,
            Constraint::Order(c) => &c.id,
        }
    }

    /// The resources the constraint names.
    pub fn resources(&self) -> Vec<&str> {
        match self {
            Constraint::Location(c) => vec![&c.rsc],
            Constraint::Colocation(c) => vec![&c.rsc, &c.with_rsc],
            Constraint::Order(c) => vec![&c.first, &c.then],
        }
    }
}

/// `location ID RSC SCORE: NODE` or `location ID RSC rule [$role=R] SCORE: EXPR ...`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Location {
    pub id: String,
    pub rsc: String,
    /// Only instances in this role are affected (crm-fence-peer bans `Promoted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    pub target: LocationTarget,
}

impl Location {
    pub fn on_node(id: &str, rsc: &str, score: Score, node: &str) -> Location {
        Location {
            id: id.to_string(),
            rsc: rsc.to_string(),
            role: None,
            target: LocationTarget::Node {
                node: node.to_string(),
                score,
            },
        }
    }
}

/// Where a location constraint applies.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocationTarget {
    /// One node, one score.
    Node { node: String, score: Score },
    /// Every node matching a rule gets that rule's score.
    Rules(Vec<Rule>),
}

/// A rule: a score for every node on which the expressions hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub score: Score,
    #[serde(default)]
    pub boolean_op: BoolOp,
    pub expressions: Vec<Expression>,
}

impl Rule {
    /// Whether the rule holds on the node `uname` with these attributes (`#uname` is the name).
    pub fn matches(&self, uname: &str, attrs: &Attrs) -> bool {
        let mut it = self.expressions.iter().map(|e| e.matches(uname, attrs));
        match self.boolean_op {
            BoolOp::And => it.all(|b| b),
            BoolOp::Or => it.any(|b| b),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BoolOp {
    #[default]
    And,
    Or,
}

/// `ATTRIBUTE OP VALUE` or `defined ATTRIBUTE`; `#uname` is the node name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expression {
    pub attribute: String,
    pub op: CmpOp,
    /// Absent exactly for `defined` and `not_defined`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default)]
    pub value_type: ValueType,
}

impl Expression {
    pub fn new(attribute: &str, op: CmpOp, value: Option<&str>) -> Expression {
        Expression {
            attribute: attribute.to_string(),
            op,
            value: value.map(str::to_string),
            value_type: ValueType::String,
        }
    }

    pub fn matches(&self, uname: &str, attrs: &Attrs) -> bool {
        let actual = if self.attribute == "#uname" {
            Some(uname)
        } else {
            attrs.get(&self.attribute).map(String::as_str)
        };
        match (self.op, actual, self.value.as_deref()) {
            (CmpOp::Defined, a, _) => a.is_some(),
            (CmpOp::NotDefined, a, _) => a.is_none(),
            (_, None, _) | (_, _, None) => false,
            (op, Some(a), Some(v)) => {
                let ord = match self.value_type {
                    ValueType::String => Some(a.cmp(v)),
                    ValueType::Integer => match (a.trim().parse::<i64>(), v.trim().parse::<i64>()) {
                        (Ok(x), Ok(y)) => Some(x.cmp(&y)),
                        _ => None,
                    },
                };
                let Some(ord) = ord else { return false };
                use std::cmp::Ordering::*;
                match op {
                    CmpOp::Eq => ord == Equal,
                    CmpOp::Ne => ord != Equal,
                    CmpOp::Lt => ord == Less,
                    CmpOp::Lte => ord != Greater,
                    CmpOp::Gt => ord == Greater,
                    CmpOp::Gte => ord != Less,
                    CmpOp::Defined | CmpOp::NotDefined => unreachable!("handled above"),
                }
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Lte,
    Gt,
    Gte,
    Defined,
    NotDefined,
}

impl CmpOp {
    pub fn takes_value(self) -> bool {
        !matches!(self, CmpOp::Defined | CmpOp::NotDefined)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueType {
    #[default]
    String,
    Integer,
}

/// `colocation ID SCORE: RSC[:ROLE] WITH_RSC[:ROLE]`: place `rsc` relative to `with_rsc`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Colocation {
    pub id: String,
    pub score: Score,
    pub rsc: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rsc_role: Option<Role>,
    pub with_rsc: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with_rsc_role: Option<Role>,
}

impl Colocation {
    pub fn new(id: &str, score: Score, rsc: &str, with_rsc: &str) -> Colocation {
        Colocation {
            id: id.to_string(),
            score,
            rsc: rsc.to_string(),
            rsc_role: None,
            with_rsc: with_rsc.to_string(),
            with_rsc_role: None,
        }
    }

    pub fn with_role(mut self, role: Role) -> Colocation {
        self.with_rsc_role = Some(role);
        self
    }
}

/// `order ID KIND: FIRST[:ACTION] THEN[:ACTION] [symmetrical=BOOL]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    pub id: String,
    pub kind: OrderKind,
    pub first: String,
    pub first_action: Action,
    pub then: String,
    pub then_action: Action,
    /// `None`: Pacemaker's default (true, except for `Serialize`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symmetrical: Option<bool>,
}

impl Order {
    /// `order ID KIND: FIRST:first_action THEN:then_action`.
    pub fn new(id: &str, kind: OrderKind, first: (&str, Action), then: (&str, Action)) -> Order {
        Order {
            id: id.to_string(),
            kind,
            first: first.0.to_string(),
            first_action: first.1,
            then: then.0.to_string(),
            then_action: then.1,
            symmetrical: None,
        }
    }

    /// Whether the reverse ordering applies when stopping/demoting.
    pub fn is_symmetrical(&self) -> bool {
        self.symmetrical.unwrap_or(self.kind != OrderKind::Serialize)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderKind {
    /// `then` waits for `first`; if `first` stops, `then` stops (crm score `inf:`).
    Mandatory,
    /// Only an ordering when both happen in one transition (crm score `0:`).
    Optional,
    /// Never at the same time, in either order.
    Serialize,
}

impl FromStr for OrderKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "mandatory" => Ok(OrderKind::Mandatory),
            "optional" => Ok(OrderKind::Optional),
            "serialize" => Ok(OrderKind::Serialize),
            _ => Err(format!(
                "{s:?} is not an order kind: expected Mandatory, Optional or Serialize"
            )),
        }
    }
}

/// Pacemaker's boolean words (`crm_is_true`): true/on/yes/y/1, false/off/no/n/0, any case.
pub fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "y" | "1" => Some(true),
        "false" | "off" | "no" | "n" | "0" => Some(false),
        _ => None,
    }
}

/// Pacemaker's durations: an integer with an optional unit (`ms`/`msec`, `us`/`usec`,
/// `s`/`sec`, `m`/`min`, `h`/`hr`); no unit means seconds. Returns milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let err = || format!("{s:?} is not a duration: expected e.g. 0, 30, 20s, 500ms, 2min or 1h");
    let n: u64 = num.parse().map_err(|_| err())?;
    let (mul, div) = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "s" | "sec" => (1000, 1),
        "ms" | "msec" => (1, 1),
        "us" | "usec" => (1, 1000),
        "m" | "min" => (60_000, 1),
        "h" | "hr" => (3_600_000, 1),
        _ => return Err(err()),
    };
    n.checked_mul(mul).map(|v| v / div).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agents() {
        for (text, shown) in [
            ("Filesystem", "ocf:heartbeat:Filesystem"),
            ("ocf:IPaddr2", "ocf:heartbeat:IPaddr2"),
            ("ocf:linbit:drbd", "ocf:linbit:drbd"),
            ("lsb:mysqld", "lsb:mysqld"),
            ("stonith:fence_xvm", "stonith:fence_xvm"),
            ("systemd:mariadb", "systemd:mariadb"),
        ] {
            assert_eq!(Agent::parse(text).unwrap().to_string(), shown);
        }
        for bad in ["", "ocf::x", "nope:x", "a:b:c:d", "lsb:"] {
            assert!(Agent::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn durations_roles_bools() {
        for (t, ms) in [
            ("0", 0),
            ("20s", 20_000),
            ("30", 30_000),
            ("500ms", 500),
            ("2min", 120_000),
            ("1h", 3_600_000),
        ] {
            assert_eq!(parse_duration_ms(t).unwrap(), ms, "{t}");
        }
        for bad in ["", "s", "1.5s", "10 parsecs", "-1"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?}");
        }
        assert_eq!("Master".parse::<Role>().unwrap(), Role::Promoted);
        assert_eq!("slave".parse::<Role>().unwrap(), Role::Unpromoted);
        assert!("Boss".parse::<Role>().is_err());
        assert_eq!(parse_bool("Off"), Some(false));
        assert_eq!(parse_bool("YES"), Some(true));
        assert_eq!(parse_bool("maybe"), None);
        assert_eq!("migrate_to".parse::<Action>().unwrap(), Action::MigrateTo);
        assert_eq!(serde_json::to_string(&Action::ReloadAgent).unwrap(), "\"reload-agent\"");
        assert_eq!(serde_json::to_string(&Action::MigrateFrom).unwrap(), "\"migrate_from\"");
    }

    #[test]
    fn rules() {
        let mut attrs = Attrs::new();
        attrs.insert("pingd".into(), "200".into());
        let rule = Rule {
            score: Score::NEG_INFINITY,
            boolean_op: BoolOp::Or,
            expressions: vec![
                Expression::new("pingd", CmpOp::NotDefined, None),
                Expression {
                    value_type: ValueType::Integer,
                    ..Expression::new("pingd", CmpOp::Lt, Some("1000"))
                },
            ],
        };
        assert!(rule.matches("alpha", &attrs));
        attrs.insert("pingd".into(), "2000".into());
        assert!(!rule.matches("alpha", &attrs));
        // String comparison would say "2000" < "1000" is false too, but "900" > "1000".
        attrs.insert("pingd".into(), "900".into());
        assert!(rule.matches("alpha", &attrs));
        let uname = Rule {
            score: Score::INFINITY,
            boolean_op: BoolOp::And,
            expressions: vec![Expression::new("#uname", CmpOp::Ne, Some("alpha"))],
        };
        assert!(!uname.matches("alpha", &attrs) && uname.matches("beta", &attrs));
    }
}
