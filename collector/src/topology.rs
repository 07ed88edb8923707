//! `topology.yaml`: every node of the province with its tier, display name and
//! parent. The collector derives each node's identity labels from it.

use std::collections::HashMap;
use std::path::Path;

use serde::Deserialize;
use tierwatch_protocol::NodeId;
use tierwatch_yamlconf::{ConfigError, Problems};

/// Tier of a node in the two-tier (plus central) hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Central,
    Province,
    Commune,
}

impl Tier {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Central => "central",
            Tier::Province => "province",
            Tier::Commune => "commune",
        }
    }
}

/// Expected figures of a node's uplink to its parent.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// Contracted bandwidth in megabits per second.
    pub bandwidth_mbps: Option<f64>,
    /// Round-trip latency the link should stay under, in milliseconds.
    pub latency_budget_ms: Option<f64>,
    /// Free text: provider, circuit id, backup path.
    pub description: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTopology {
    nodes: Vec<RawNode>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: String,
    tier: Tier,
    name: String,
    #[serde(default)]
    parent: Option<String>,
    #[serde(default)]
    link: Option<LinkSpec>,
}

/// A node as the collector knows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Node {
    pub id: NodeId,
    pub tier: Tier,
    /// Display name as written in the file (Vietnamese, UTF-8).
    pub name: String,
    pub parent: Option<NodeId>,
    /// The provincial node this node belongs to (itself for a provincial node).
    pub province: Option<NodeId>,
    pub link: Option<LinkSpec>,
}

impl Node {
    /// The identity labels `node`, `tier`, `province`, `parent`, in that (sorted-independent) order.
    pub fn identity_labels(&self) -> [(&'static str, &str); 4] {
        [
            ("node", self.id.as_str()),
            ("tier", self.tier.as_str()),
            ("province", self.province.as_ref().map(NodeId::as_str).unwrap_or("")),
            ("parent", self.parent.as_ref().map(NodeId::as_str).unwrap_or("")),
        ]
    }
}

/// The validated topology.
#[derive(Debug, Clone, PartialEq)]
pub struct Topology {
    nodes: Vec<Node>,
    index: HashMap<NodeId, usize>,
}

impl Topology {
    /// Loads and validates a topology file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (raw, text, problems) = tierwatch_yamlconf::load_all::<RawTopology>(path)?;
        Self::build(raw, path, &text, problems)
    }

    /// Parses and validates topology text (`file` names it in errors).
    pub fn parse(file: &Path, text: &str) -> Result<Self, ConfigError> {
        let (raw, problems) = tierwatch_yamlconf::parse_all::<RawTopology>(file, text)?;
        Self::build(raw, file, text, problems)
    }

    /// Validates `raw`; `problems` holds the file's type errors already.
    fn build(raw: RawTopology, file: &Path, text: &str, mut problems: Problems) -> Result<Self, ConfigError> {
        let mut index = HashMap::new();
        let mut ids = Vec::with_capacity(raw.nodes.len());
        for (i, n) in raw.nodes.iter().enumerate() {
            match NodeId::new(&n.id) {
                Ok(id) => {
                    // The first definition wins; later ones are reported.
                    if index.contains_key(&id) {
                        problems.push(format!("nodes[{i}].id"), format!("duplicate node id {:?}", n.id));
                    } else {
                        index.insert(id.clone(), i);
                    }
                    ids.push(Some(id));
                }
                Err(e) => {
                    problems.push(format!("nodes[{i}].id"), e.to_string());
                    ids.push(None);
                }
            }
            if n.name.trim().is_empty() {
                problems.push(format!("nodes[{i}].name"), "display name is empty");
            }
        }
        let mut parents = Vec::with_capacity(raw.nodes.len());
        for (i, n) in raw.nodes.iter().enumerate() {
            let path = format!("nodes[{i}].parent");
            let parent = match &n.parent {
                None => None,
                Some(p) => match NodeId::new(p).ok().and_then(|p| index.get(&p).map(|&j| (p, j))) {
                    None => {
                        problems.push(path, format!("parent {p:?} is not a node of this topology"));
                        None
                    }
                    Some((p, j)) => {
                        let pt = raw.nodes[j].tier;
                        let allowed = match n.tier {
                            Tier::Central => false,
                            Tier::Province => pt == Tier::Central,
                            Tier::Commune => pt == Tier::Province,
                        };
                        if !allowed {
                            problems.push(
                                path,
                                format!(
                                    "a {} node cannot have a {} parent ({p}); communes hang off a province, provinces off central",
                                    n.tier.as_str(),
                                    pt.as_str()
                                ),
                            );
                        }
                        Some(p)
                    }
                },
            };
            if n.tier == Tier::Commune && n.parent.is_none() {
                problems.push(format!("nodes[{i}]"), "a commune needs a parent (its provincial node)");
            }
            parents.push(parent);
        }
        if raw.nodes.is_empty() {
            problems.push("nodes", "the topology lists no nodes");
        }
        problems.into_result(file, text)?;

        let mut nodes = Vec::with_capacity(raw.nodes.len());
        for ((n, id), parent) in raw.nodes.into_iter().zip(ids).zip(parents) {
            let Some(id) = id else { continue };
            let province = match n.tier {
                Tier::Province => Some(id.clone()),
                Tier::Commune => parent.clone(),
                Tier::Central => None,
            };
            nodes.push(Node { id, tier: n.tier, name: n.name, parent, province, link: n.link });
        }
        Ok(Topology { nodes, index })
    }

    /// Looks a node up by id.
    pub fn get(&self, id: &NodeId) -> Option<&Node> {
        self.index.get(id).map(|&i| &self.nodes[i])
    }

    /// Where node `id` is in [`Topology::nodes`].
    pub fn position(&self, id: &NodeId) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// Looks a node up by its id string.
    pub fn get_str(&self, id: &str) -> Option<&Node> {
        self.index.get(id).map(|&i| &self.nodes[i])
    }

    /// Every node, in file order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "\
nodes:
  - id: an-giang
    tier: province
    name: Trung tâm Dữ liệu tỉnh An Giang
  - id: nui-cam
    tier: commune
    name: Xã Núi Cấm
    parent: an-giang
    link: { bandwidth_mbps: 100, latency_budget_ms: 40 }
";

    #[test]
    fn derives_identity_labels() {
        let t = Topology::parse(Path::new("topology.yaml"), GOOD).unwrap();
        let n = t.get_str("nui-cam").unwrap();
        assert_eq!(n.name, "Xã Núi Cấm");
        assert_eq!(
            n.identity_labels(),
            [("node", "nui-cam"), ("tier", "commune"), ("province", "an-giang"), ("parent", "an-giang")]
        );
        let p = t.get_str("an-giang").unwrap();
        assert_eq!(p.identity_labels()[2], ("province", "an-giang"));
        assert_eq!(p.identity_labels()[3], ("parent", ""));
    }

    #[test]
    fn reports_every_problem_with_its_line() {
        let text = "\
nodes:
  - id: an-giang
    tier: province
    name: An Giang
  - id: an-giang
    tier: commune
    name: Dup
    parent: an-giang
  - id: Bad_Id
    tier: commune
    name: x
    parent: nowhere
";
        let err = Topology::parse(Path::new("t.yaml"), text).unwrap_err().to_string();
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 3, "{err}");
        assert!(lines[0].starts_with("t.yaml:5:5: nodes[1].id: duplicate node id"), "{err}");
        assert!(lines[1].starts_with("t.yaml:9:5: nodes[2].id: node id \"Bad_Id\""), "{err}");
        assert!(lines[2].starts_with("t.yaml:12:5: nodes[2].parent: parent \"nowhere\""), "{err}");
    }

    #[test]
    fn tier_rules() {
        let text = "nodes:\n  - id: a\n    tier: commune\n    name: A\n  - id: b\n    tier: commune\n    name: B\n    parent: a\n";
        let err = Topology::parse(Path::new("t.yaml"), text).unwrap_err().to_string();
        assert!(err.contains("nodes[0]: a commune needs a parent"), "{err}");
        assert!(err.contains("a commune node cannot have a commune parent"), "{err}");
    }
}
