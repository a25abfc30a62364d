//! The dataflow graph of a plan: takes a plan (its graph not yet filled) and gives the graph of
//! one training step per stage, built with petgraph: policy and frozen reference models,
//! sources, the stage's mixer, rollout nodes (one per source and sampling configuration, shared
//! by every objective of the stage that reads them), verifiers, reward combinations, losses,
//! the reweighter, the optimiser step, probes, checkpoints and metrics. Stages are chained
//! optimiser to mixer. Node order is the order of construction, which follows the plan and so
//! the file: deterministic. The compiler fills every plan's graph with it, and the runtime's
//! plans built in code do too, so there is one graph builder.

use crate::{Edge, Graph, Name, Node, NodeKind, ObjectiveSpec, Plan};
use compact_str::format_compact;
use foldhash::{HashMap, HashMapExt, HashSet};
use petgraph::graph::{DiGraph, NodeIndex};

/// The graph of a plan has a cycle, through the node `through`: a bug of whoever built the
/// plan, since every graph the builder makes from a plan runs forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cycle {
    pub through: Name,
}

struct Builder {
    /// The graph's shape only: its nodes carry no weight, so the adjacency lists that every
    /// new edge updates stay small enough to be in cache on a large plan (with the nodes inside
    /// them, each edge of a 100k-line pipeline's graph cost two cache misses).
    g: DiGraph<(), ()>,
    /// The nodes, at their `NodeIndex` in `g`.
    nodes: Vec<Node>,
    /// The node indices by id.
    ids: HashMap<Name, NodeIndex>,
    /// Edges already added: petgraph's `find_edge` scans a node's edges, which would make
    /// wide nodes (the policy, a stage's mixer) quadratic.
    edges: HashSet<(NodeIndex, NodeIndex)>,
    /// The id being looked up, written here rather than into a new string: most lookups find
    /// a node that exists already (every objective names its source and verifiers again).
    key: String,
}

impl Builder {
    /// The node whose id is `id`, if it exists.
    fn find(&mut self, id: std::fmt::Arguments) -> Option<NodeIndex> {
        use std::fmt::Write;
        self.key.clear();
        let _ = self.key.write_fmt(id);
        self.ids.get(self.key.as_str()).copied()
    }

    /// Adds the node `id` unless it is there already. The label is made only for a new node:
    /// sources, verifiers and the policy are named again by every objective that reads them.
    fn node(
        &mut self,
        id: std::fmt::Arguments,
        kind: NodeKind,
        label: impl FnOnce() -> Name,
        stage: Option<&str>,
    ) -> NodeIndex {
        if let Some(ix) = self.find(id) {
            return ix;
        }
        let ix = self.g.add_node(());
        self.nodes.push(Node {
            id: Name::from(self.key.as_str()),
            kind,
            label: label(),
            stage: stage.map(Name::from),
        });
        self.ids.insert(Name::from(self.key.as_str()), ix);
        ix
    }

    fn edge(&mut self, a: NodeIndex, b: NodeIndex) {
        if self.edges.insert((a, b)) {
            self.g.add_edge(a, b, ());
        }
    }
}

/// The dataflow graph of `plan` (whose own `graph` is not read).
pub fn build(plan: &Plan) -> Result<Graph, Cycle> {
    // An estimate of the graph's size from the plan (each objective brings a loss, a reward
    // node and its verifiers), so the graph and its tables are allocated once rather than
    // grown by doubling, which at 100k lines copies megabytes and frees large blocks.
    let nodes_estimate = 2
        + plan.sources.len()
        + plan.models.len()
        + plan
            .stages
            .iter()
            .map(|st| {
                8 + st.rollouts.len()
                    + 3 * st.objectives.len()
                    + st.evals.len() * 2
                    + plan.verifiers.len()
            })
            .sum::<usize>();
    let edges_estimate = 2 * nodes_estimate;
    let mut edges = HashSet::default();
    edges.reserve(edges_estimate);
    let mut b = Builder {
        g: DiGraph::with_capacity(nodes_estimate, edges_estimate),
        nodes: Vec::with_capacity(nodes_estimate),
        ids: HashMap::with_capacity(nodes_estimate),
        edges,
        key: String::new(),
    };
    let policy = b.node(
        format_args!("model.{}", plan.policy),
        NodeKind::Model,
        || format_compact!("policy {}", plan.policy),
        None,
    );
    let mut prev_opt: Option<NodeIndex> = None;
    for st in &plan.stages {
        let s = st.name.as_str();
        let mixer = b.node(
            format_args!("{s}.mix"),
            NodeKind::Mixer,
            || format_compact!("mix {}", mix_name(&st.mix)),
            Some(s),
        );
        if let Some(p) = prev_opt {
            b.edge(p, mixer);
        }
        for r in &st.rollouts {
            let src = b.node(
                format_args!("source.{}", r.source),
                NodeKind::Source,
                || format_compact!("source {}", r.source),
                None,
            );
            b.edge(src, mixer);
            let ro = b.node(
                format_args!("{s}.rollout.{}", r.id),
                NodeKind::Rollout,
                || format_compact!("rollout {} (G={}, T={})", r.id, r.group, r.temperature),
                Some(s),
            );
            b.edge(mixer, ro);
            b.edge(policy, ro);
        }
        let reweight = b.node(
            format_args!("{s}.reweight"),
            NodeKind::Reweighter,
            || format_compact!("reweight {}", reweight_name(&st.reweight)),
            Some(s),
        );
        for o in &st.objectives {
            let loss = match &o.spec {
                ObjectiveSpec::Grpo {
                    rollout,
                    rewards,
                    kl,
                    ..
                } => {
                    // The rollout node exists when lowering named it among the stage's
                    // rollouts; edges from a missing one are left out.
                    let ro = b.find(format_args!("{s}.rollout.{rollout}"));
                    let reward = b.node(
                        format_args!("{s}.reward.{}", o.name),
                        NodeKind::Reward,
                        || format_compact!("rewards of {}", o.name),
                        Some(s),
                    );
                    for t in rewards {
                        for part in &t.parts {
                            let v = b.node(
                                format_args!("{s}.verifier.{}", part.verifier),
                                NodeKind::Verifier,
                                || format_compact!("verifier {}", part.verifier),
                                Some(s),
                            );
                            if let Some(ro) = ro {
                                b.edge(ro, v);
                            }
                            b.edge(v, reward);
                        }
                    }
                    let loss = b.node(
                        format_args!("{s}.loss.{}", o.name),
                        NodeKind::Loss,
                        || format_compact!("grpo {}", o.name),
                        Some(s),
                    );
                    b.edge(reward, loss);
                    if let Some(ro) = ro {
                        b.edge(ro, loss);
                    }
                    b.edge(policy, loss);
                    if let Some(kl) = kl {
                        let r = b.node(
                            format_args!("model.{}", kl.reference),
                            NodeKind::Reference,
                            || format_compact!("frozen {}", kl.reference),
                            None,
                        );
                        if let Some(ro) = ro {
                            b.edge(ro, loss);
                        }
                        b.edge(r, loss);
                    }
                    loss
                }
                ObjectiveSpec::Sft { source, .. } => {
                    let src = b.node(
                        format_args!("source.{source}"),
                        NodeKind::Source,
                        || format_compact!("source {source}"),
                        None,
                    );
                    b.edge(src, mixer);
                    let loss = b.node(
                        format_args!("{s}.loss.{}", o.name),
                        NodeKind::Loss,
                        || format_compact!("sft {}", o.name),
                        Some(s),
                    );
                    b.edge(mixer, loss);
                    b.edge(policy, loss);
                    loss
                }
            };
            b.edge(loss, reweight);
        }
        let opt = b.node(
            format_args!("{s}.optimizer"),
            NodeKind::Optimizer,
            || format_compact!("optimizer step ({} steps)", st.train.steps),
            Some(s),
        );
        b.edge(reweight, opt);
        let metrics = b.node(
            format_args!("{s}.metrics"),
            NodeKind::Metrics,
            || Name::const_new("metrics.jsonl"),
            Some(s),
        );
        b.edge(reweight, metrics);
        b.edge(opt, metrics);
        if let Some(cp) = &st.train.checkpoint {
            let c = b.node(
                format_args!("{s}.checkpoint"),
                NodeKind::Checkpoint,
                || format_compact!("checkpoint every {}", cp.every),
                Some(s),
            );
            b.edge(opt, c);
        }
        for e in &st.evals {
            let pr = b.node(
                format_args!("{s}.probe.{}", e.name),
                NodeKind::Probe,
                || format_compact!("probe {} every {}", e.name, e.every),
                Some(s),
            );
            let src = b.node(
                format_args!("source.{}", e.source),
                NodeKind::Source,
                || format_compact!("source {}", e.source),
                None,
            );
            b.edge(src, pr);
            b.edge(opt, pr);
            // A probe scores its own greedy completions, so its verifiers are nodes of their
            // own rather than the ones fed by the training rollouts.
            for t in &e.rewards {
                for part in &t.parts {
                    let v = b.node(
                        format_args!("{s}.probe.{}.verifier.{}", e.name, part.verifier),
                        NodeKind::Verifier,
                        || format_compact!("verifier {}", part.verifier),
                        Some(s),
                    );
                    b.edge(pr, v);
                    b.edge(v, metrics);
                }
            }
        }
        prev_opt = Some(opt);
    }
    let node = |ix: NodeIndex| b.nodes.get(ix.index());
    if let Err(cycle) = petgraph::algo::toposort(&b.g, None) {
        let through = node(cycle.node_id())
            .map(|n| n.id.clone())
            .unwrap_or_default();
        return Err(Cycle { through });
    }
    let mut edges: Vec<Edge> = Vec::with_capacity(b.g.edge_count());
    edges.extend(b.g.raw_edges().iter().filter_map(|e| {
        Some(Edge {
            from: node(e.source())?.id.clone(),
            to: node(e.target())?.id.clone(),
        })
    }));
    let nodes = b.nodes;
    Ok(Graph { nodes, edges })
}

fn mix_name(m: &crate::Mix) -> &'static str {
    use crate::Mix::*;
    match m {
        RoundRobin => "round_robin",
        Uniform { .. } => "uniform",
        Proportional => "proportional",
        Weights { .. } => "weights",
        Coreset { .. } => "coreset",
        All => "all",
    }
}

fn reweight_name(r: &crate::Reweight) -> &'static str {
    use crate::Reweight::*;
    match r {
        Recap { .. } => "recap",
        Uniform => "uniform",
        Static { .. } => "static",
        Dwa { .. } => "dwa",
        Rlw { .. } => "rlw",
    }
}
