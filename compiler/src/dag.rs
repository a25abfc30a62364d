//! DAG: takes a lowered plan (without its graph) and gives its dataflow graph, built by the plan
//! crate's one graph builder (`recap_plan::graph`), a cycle reported as an internal error. Also
//! renders a graph as DOT, Mermaid or text.

use crate::diagnostic::{Diagnostic, Problem, Span};
use crate::internal::InternalProblem;
use crate::GraphFormat;
use foldhash::HashMap;
use recap_plan::{Graph, NodeKind, Plan};

/// The plan's dataflow graph (`recap_plan::graph::build`), or the internal error that it has a
/// cycle.
pub fn build(plan: &Plan) -> Result<Graph, Diagnostic> {
    recap_plan::graph::build(plan).map_err(|cycle| {
        InternalProblem::DagCycle(&cycle.through).at(Span::default(), "in the whole file")
    })
}

fn shape(kind: NodeKind) -> &'static str {
    match kind {
        NodeKind::Model | NodeKind::Reference => "box3d",
        NodeKind::Source => "cylinder",
        NodeKind::Verifier | NodeKind::Reward => "diamond",
        NodeKind::Loss => "ellipse",
        NodeKind::Metrics | NodeKind::Checkpoint => "note",
        _ => "box",
    }
}

fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Renders the plan's graph. Stage nodes are grouped by stage (DOT clusters, Mermaid
/// subgraphs, text sections).
pub fn render(plan: &Plan, format: GraphFormat) -> String {
    let g = &plan.graph;
    let mut stages: Vec<Option<&str>> = vec![None];
    for n in &g.nodes {
        let s = n.stage.as_deref();
        if !stages.contains(&s) {
            stages.push(s);
        }
    }
    let index: HashMap<&str, usize> = g
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.id.as_str(), i))
        .collect();
    let mut out = String::new();
    match format {
        GraphFormat::Dot => {
            out.push_str("digraph recap {\n  rankdir=LR;\n  node [fontname=\"Helvetica\"];\n");
            for s in &stages {
                let indent = if s.is_some() { "    " } else { "  " };
                if let Some(name) = s {
                    out.push_str(&format!(
                        "  subgraph \"cluster_{}\" {{\n    label=\"stage {}\";\n",
                        quote(name),
                        quote(name)
                    ));
                }
                for n in g.nodes.iter().filter(|n| n.stage.as_deref() == *s) {
                    out.push_str(&format!(
                        "{indent}\"{}\" [label=\"{}\", shape={}];\n",
                        quote(&n.id),
                        quote(&n.label),
                        shape(n.kind)
                    ));
                }
                if s.is_some() {
                    out.push_str("  }\n");
                }
            }
            for e in &g.edges {
                out.push_str(&format!(
                    "  \"{}\" -> \"{}\";\n",
                    quote(&e.from),
                    quote(&e.to)
                ));
            }
            out.push_str("}\n");
        }
        GraphFormat::Mermaid => {
            out.push_str("flowchart LR\n");
            for s in &stages {
                let indent = if s.is_some() { "    " } else { "  " };
                if let Some(name) = s {
                    out.push_str(&format!("  subgraph stage_{name}[\"stage {name}\"]\n"));
                }
                for n in g.nodes.iter().filter(|n| n.stage.as_deref() == *s) {
                    let i = index.get(n.id.as_str()).copied().unwrap_or(0);
                    out.push_str(&format!(
                        "{indent}n{i}[\"{}\"]\n",
                        n.label.replace('"', "'")
                    ));
                }
                if s.is_some() {
                    out.push_str("  end\n");
                }
            }
            for e in &g.edges {
                let (a, b) = (
                    index.get(e.from.as_str()).copied().unwrap_or(0),
                    index.get(e.to.as_str()).copied().unwrap_or(0),
                );
                out.push_str(&format!("  n{a} --> n{b}\n"));
            }
        }
        GraphFormat::Text => {
            let mut inputs: HashMap<&str, Vec<&str>> = HashMap::default();
            for e in &g.edges {
                inputs
                    .entry(e.to.as_str())
                    .or_default()
                    .push(e.from.as_str());
            }
            for s in &stages {
                match s {
                    Some(name) => out.push_str(&format!("stage {name}\n")),
                    None => out.push_str("shared\n"),
                }
                for n in g.nodes.iter().filter(|n| n.stage.as_deref() == *s) {
                    let inputs = inputs.get(n.id.as_str()).cloned().unwrap_or_default();
                    if inputs.is_empty() {
                        out.push_str(&format!("  {}  [{}]\n", n.id, n.label));
                    } else {
                        out.push_str(&format!(
                            "  {}  [{}]  <- {}\n",
                            n.id,
                            n.label,
                            inputs.join(", ")
                        ));
                    }
                }
            }
        }
    }
    out
}
