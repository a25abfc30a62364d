//! Resolve: takes the parsed file and the `--set` overrides; gives `Resolved`, the table of
//! every named entity (params, lets, declarations) with its scope (top level or one stage),
//! the settings of each scope, the stages, and an evaluation order in which every entity comes
//! after the entities it references. Reports unknown names (with "did you mean"), duplicate
//! names and settings, items in the wrong place, unknown `use` modules, calls of names that
//! are not functions, reference cycles (with the whole path), overrides of unknown params and
//! unused declarations (warnings).

mod problems;

pub use problems::{Placement, ResolveCode, ResolveProblem};

use crate::ast::*;
use crate::diagnostic::{did_you_mean, Diagnostic, Problem, Span};
use crate::stdlib::Stdlib;
use crate::types::Ty;
use compact_str::CompactString;
use petgraph::graph::{DiGraph, NodeIndex};
use std::collections::{HashMap, HashSet, VecDeque};

/// The name table: every declared name, with what a lookup of it finds.
#[derive(Debug)]
struct Names(HashMap<CompactString, Slot>);

impl Names {
    fn with_capacity(n: usize) -> Self {
        Names(HashMap::with_capacity(n))
    }

    /// The entry of `name`, if it is declared.
    fn get(&self, name: &str) -> Option<Slot> {
        self.0.get(name).copied()
    }

    /// The entity `name` refers to from `stage`, and its kind.
    fn lookup(&self, name: &str, stage: Option<usize>) -> Option<(EntityId, EntityKind)> {
        self.get(name)?.visible(stage)
    }

    /// Adds entity `id`, whose name `get` has just not found.
    fn push(&mut self, name: CompactString, id: u32, stage: u32, kind: EntityKind) {
        self.0.insert(name, Slot { id, stage, kind });
    }
}

/// What a lookup finds: the entity, the stage that declares it (`u32::MAX` for the top level)
/// and its kind.
#[derive(Debug, Clone, Copy)]
struct Slot {
    id: u32,
    stage: u32,
    kind: EntityKind,
}

impl Slot {
    /// The entity and its kind when it can be seen from `stage` (top-level names are visible
    /// everywhere, stage names only inside their stage).
    fn visible(self, stage: Option<usize>) -> Option<(EntityId, EntityKind)> {
        let seen = self.stage == u32::MAX || stage.is_some_and(|s| s == self.stage as usize);
        seen.then_some((self.id as usize, self.kind))
    }
}

pub type EntityId = usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntityKind {
    Param,
    Let,
    Decl(DeclKind),
}

#[derive(Debug)]
pub struct Entity<'a> {
    /// A copy of the declared name (inline up to 24 bytes), so that later stages read an
    /// entity's name from the entity list rather than from the syntax tree, which in a large
    /// file is long out of cache when lower names every source, verifier and objective.
    pub name: Ident,
    pub kind: EntityKind,
    /// The stage that declares it; `None` at the top level.
    pub stage: Option<usize>,
    pub item: &'a Item,
    pub value: &'a Expr,
    pub block: Option<&'a Block>,
    /// For params: the `--set` text that replaces the value.
    pub override_text: Option<String>,
}

#[derive(Debug, Clone, Copy)]
pub struct Setting<'a> {
    pub kind: SettingKind,
    pub item: &'a Item,
    pub kind_span: Span,
    pub value: Option<&'a Expr>,
    pub block: Option<&'a Block>,
}

#[derive(Debug)]
pub struct StageScope<'a> {
    /// `None` for the implicit stage `main` of a file without stages.
    pub name: Option<&'a Ident>,
    pub span: Span,
    pub settings: Vec<Setting<'a>>,
    /// Objectives and evals of the stage in declaration order.
    pub members: Vec<EntityId>,
}

#[derive(Debug)]
pub struct Resolved<'a> {
    pub entities: Vec<Entity<'a>>,
    pub top_settings: Vec<Setting<'a>>,
    pub stages: Vec<StageScope<'a>>,
    /// Entity ids, each after everything it references; entities on a cycle are left out.
    pub order: Vec<EntityId>,
    names: Names,
    /// What each name used as a value in an entity's value meant where resolve walked it,
    /// keyed by the address of the name's node (see `recorded`).
    recorded: HashMap<usize, Option<EntityId>>,
}

impl<'a> Resolved<'a> {
    /// The entity a name refers to from `stage` (top-level names are visible everywhere, stage
    /// names only inside their stage).
    pub fn lookup(&self, name: &str, stage: Option<usize>) -> Option<EntityId> {
        self.lookup_kind(name, stage).map(|(id, _)| id)
    }

    /// `lookup` with the entity's kind, read from the name table itself.
    pub fn lookup_kind(&self, name: &str, stage: Option<usize>) -> Option<(EntityId, EntityKind)> {
        self.names.lookup(name, stage)
    }

    /// The entity that `name`, a name used as a value in an entity's value, refers to, as resolve
    /// found it: `None` when resolve recorded nothing for the name (names in settings, which
    /// typecheck evaluates once per stage, and names from outside the file, such as the
    /// stdlib's defaults), else the entity or `Some(None)` for none. Typecheck reads this rather
    /// than looking the name up again. The key is the node's address: the tree is borrowed
    /// for as long as `Resolved` lives, so an address is one node of it, and a node from
    /// elsewhere can never match one (a span could: the stdlib's spans are offsets in its own
    /// text).
    pub fn recorded(&self, name: &Ident) -> Option<Option<EntityId>> {
        self.recorded.get(&node_key(name)).copied()
    }

    /// The kind of entity `id`.
    pub fn kind(&self, id: EntityId) -> Option<EntityKind> {
        self.entities.get(id).map(|e| e.kind)
    }

    /// The name of entity `id` (empty for an id that is not one).
    pub fn name(&self, id: EntityId) -> &str {
        self.entities
            .get(id)
            .map(|e| e.name.name.as_str())
            .unwrap_or_default()
    }

    pub fn setting(&self, stage: usize, kind: SettingKind) -> Option<Setting<'a>> {
        let own = self
            .stages
            .get(stage)
            .and_then(|s| s.settings.iter().find(|x| x.kind == kind).copied());
        own.or_else(|| self.top_settings.iter().find(|x| x.kind == kind).copied())
    }
}

struct Resolver<'a, 'd> {
    std: &'static Stdlib,
    diags: &'d mut Vec<Diagnostic>,
    entities: Vec<Entity<'a>>,
    names: Names,
    top_settings: Vec<Setting<'a>>,
    stages: Vec<StageScope<'a>>,
    staged: bool,
    /// Whether `walk` records each name's answer in `recorded`: on while entity values are
    /// walked, each once in the stage typecheck evaluates it in; off for settings, which
    /// typecheck evaluates once per stage and so looks up afresh.
    record: bool,
    recorded: HashMap<usize, Option<EntityId>>,
    /// The parameter the argument being walked is passed to, so that did-you-mean guesses a
    /// name of a kind that fits there. Its type is looked up only for an unknown name.
    expect: Option<ParamSlot<'a>>,
    /// Names declared by items lost to syntax errors (see `resolve_partial`).
    lost: &'d HashSet<&'d str>,
}

/// A parameter of a stdlib function: by name, or else by position (as `query::param_type`
/// takes it).
#[derive(Debug, Clone, Copy)]
struct ParamSlot<'a> {
    function: &'a str,
    name: Option<&'a str>,
    index: usize,
}

impl ParamSlot<'_> {
    fn ty(self) -> Option<Ty> {
        crate::query::param_type(self.function, self.name, self.index)
    }
}

/// The function whose parameters a value's block sets (`grpo(math) { ... }`, `uniform`).
fn callee_of(e: &Expr) -> Option<&str> {
    match &e.kind {
        ExprKind::Call { func, .. } => Some(&func.name),
        ExprKind::Method { name, .. } => Some(&name.name),
        ExprKind::Name(id) => Some(&id.name),
        _ => None,
    }
}

/// The key of a syntax node in `Resolved::recorded`: its address.
fn node_key(name: &Ident) -> usize {
    std::ptr::from_ref(name) as usize
}

/// `report_unused` is off when items were lost to syntax errors (their uses are unknown).
pub fn resolve<'a>(
    file: &'a File,
    overrides: &[(String, String)],
    report_unused: bool,
    diags: &mut Vec<Diagnostic>,
) -> Resolved<'a> {
    resolve_names(file, overrides, report_unused, &HashSet::new(), diags)
}

/// `resolve` for a file some of whose items were lost to syntax errors, declaring the names
/// `lost`: a use of one of them is not reported as unknown (the syntax error is the one problem
/// there, and declarations may come in any order), and no declaration is reported unused.
pub fn resolve_partial<'a>(
    file: &'a File,
    overrides: &[(String, String)],
    lost: &HashSet<&str>,
    diags: &mut Vec<Diagnostic>,
) -> Resolved<'a> {
    resolve_names(file, overrides, false, lost, diags)
}

fn resolve_names<'a>(
    file: &'a File,
    overrides: &[(String, String)],
    report_unused: bool,
    lost: &HashSet<&str>,
    diags: &mut Vec<Diagnostic>,
) -> Resolved<'a> {
    let staged = file
        .items
        .iter()
        .any(|i| matches!(i.kind, ItemKind::Stage { .. }));
    // Every item but a stage declares at most one entity. Sizing the tables for them up front
    // spares a large file the rehashing of a growing name table.
    let items: usize = file
        .items
        .iter()
        .map(|i| match &i.kind {
            ItemKind::Stage { items, .. } => items.len(),
            _ => 1,
        })
        .sum();
    let names = Names::with_capacity(items);
    let mut r = Resolver {
        std: crate::stdlib::stdlib(),
        diags,
        entities: Vec::with_capacity(items),
        names,
        top_settings: Vec::new(),
        stages: Vec::new(),
        staged,
        record: true,
        recorded: HashMap::new(),
        expect: None,
        lost,
    };
    if !staged {
        r.stages.push(StageScope {
            name: None,
            span: file.span,
            settings: Vec::new(),
            members: Vec::new(),
        });
    }
    for item in &file.items {
        r.collect(item, None);
    }
    // Overrides name params of the top level.
    for (key, value) in overrides {
        match r.names.get(key.as_str()).map(|s| s.id as usize) {
            Some(id) if r.entities.get(id).map(|e| e.kind) == Some(EntityKind::Param) => {
                if let Some(e) = r.entities.get_mut(id) {
                    e.override_text = Some(value.clone());
                }
            }
            _ => {
                let params: Vec<&str> = r
                    .entities
                    .iter()
                    .filter(|e| e.kind == EntityKind::Param)
                    .map(|e| e.name.name.as_str())
                    .collect();
                // An override is not in the file, so the diagnostic has no label.
                r.diags
                    .push(Diagnostic::from(&ResolveProblem::UnknownParam {
                        key,
                        value,
                        params: &params,
                    }));
            }
        }
    }
    let (order, uses) = r.dependencies();
    if report_unused {
        r.unused(&uses);
    }
    Resolved {
        entities: r.entities,
        top_settings: r.top_settings,
        stages: r.stages,
        order,
        names: r.names,
        recorded: r.recorded,
    }
}

impl<'a> Resolver<'a, '_> {
    fn misplaced(&mut self, span: Span, place: Placement) {
        self.diags
            .push(ResolveProblem::Misplaced(place).at(span, "not allowed here"));
    }

    fn add_entity(&mut self, e: Entity<'a>) -> Option<EntityId> {
        if let Some(prev) = self.names.get(e.name.name.as_str()).map(|s| s.id as usize) {
            let prev_span = self
                .entities
                .get(prev)
                .map(|p| p.name.span)
                .unwrap_or_default();
            self.diags.push(
                ResolveProblem::DuplicateName { name: &e.name.name }
                    .at(e.name.span, "declared again here")
                    .label(prev_span, "first declared here"),
            );
            return None;
        }
        let id = self.entities.len();
        // Ids and stage numbers fit 32 bits below `u32::MAX`: the parser refuses files over
        // 4 GiB, and every item takes more than one byte. The fallbacks only avoid a panic.
        let stage = e
            .stage
            .map_or(u32::MAX, |s| u32::try_from(s).unwrap_or(u32::MAX - 1));
        let slot = u32::try_from(id).unwrap_or(u32::MAX);
        self.names.push(e.name.name.clone(), slot, stage, e.kind);
        self.entities.push(e);
        Some(id)
    }

    fn collect(&mut self, item: &'a Item, stage: Option<usize>) {
        match &item.kind {
            ItemKind::Use { path } => {
                if stage.is_some() {
                    return self.misplaced(item.span, Placement::UseInStage);
                }
                let names: Vec<&str> = path.iter().map(|p| p.name.as_str()).collect();
                let module = match names.as_slice() {
                    ["std", m] => Some(*m),
                    [m] => Some(*m),
                    _ => None,
                };
                let known = module.is_some_and(|m| self.std.is_module(m));
                if !known {
                    let span = Span::new(
                        path.first()
                            .map(|p| p.span.start())
                            .unwrap_or(item.span.start()),
                        path.last().map(|p| p.span.end()).unwrap_or(item.span.end()),
                    );
                    let problem = ResolveProblem::UnknownModule {
                        path: names.join("."),
                        module,
                    };
                    self.diags.push(problem.at(span, "unknown module"));
                }
            }
            ItemKind::Param { name, value, .. } => {
                if stage.is_some() {
                    return self.misplaced(item.span, Placement::ParamInStage);
                }
                self.add_entity(Entity {
                    name: name.clone(),
                    kind: EntityKind::Param,
                    stage,
                    item,
                    value,
                    block: None,
                    override_text: None,
                });
            }
            ItemKind::Let { name, value } => {
                self.add_entity(Entity {
                    name: name.clone(),
                    kind: EntityKind::Let,
                    stage,
                    item,
                    value,
                    block: None,
                    override_text: None,
                });
            }
            ItemKind::Decl {
                kind,
                kind_span,
                name,
                value,
                block,
            } => {
                let in_stage_kind = matches!(kind, DeclKind::Objective | DeclKind::Eval);
                if stage.is_some() && !in_stage_kind {
                    return self.misplaced(*kind_span, Placement::DeclInStage(kind.keyword()));
                }
                if stage.is_none() && in_stage_kind && self.staged {
                    return self
                        .misplaced(*kind_span, Placement::TopLevelInStagedFile(kind.keyword()));
                }
                let id = self.add_entity(Entity {
                    name: name.clone(),
                    kind: EntityKind::Decl(*kind),
                    stage,
                    item,
                    value,
                    block: block.as_ref(),
                    override_text: None,
                });
                if let (Some(id), true) = (id, in_stage_kind) {
                    let idx = stage.unwrap_or(0);
                    if let Some(s) = self.stages.get_mut(idx) {
                        s.members.push(id);
                    }
                }
            }
            ItemKind::Setting {
                kind,
                kind_span,
                value,
                block,
            } => {
                let setting = Setting {
                    kind: *kind,
                    item,
                    kind_span: *kind_span,
                    value: value.as_ref(),
                    block: block.as_ref(),
                };
                let list = match stage {
                    // In a file without stages the top-level settings are the main stage's.
                    None => &mut self.top_settings,
                    Some(s) => match self.stages.get_mut(s) {
                        Some(st) => &mut st.settings,
                        None => return,
                    },
                };
                if let Some(prev) = list.iter().find(|s| s.kind == *kind) {
                    let prev_span = prev.kind_span;
                    self.diags.push(
                        ResolveProblem::DuplicateSetting {
                            keyword: kind.keyword(),
                        }
                        .at(*kind_span, "set again here")
                        .label(prev_span, "first set here"),
                    );
                    return;
                }
                list.push(setting);
            }
            ItemKind::Stage { name, items } => {
                if stage.is_some() {
                    return self.misplaced(name.span, Placement::NestedStage);
                }
                if let Some(prev) = self
                    .stages
                    .iter()
                    .find(|s| s.name.is_some_and(|n| n.name == name.name))
                {
                    let prev_span = prev.name.map(|n| n.span).unwrap_or_default();
                    self.diags.push(
                        ResolveProblem::DuplicateStage { name: &name.name }
                            .at(name.span, "declared again here")
                            .label(prev_span, "first declared here"),
                    );
                }
                let idx = self.stages.len();
                self.stages.push(StageScope {
                    name: Some(name),
                    span: item.span,
                    settings: Vec::new(),
                    members: Vec::new(),
                });
                for inner in items {
                    self.collect(inner, Some(idx));
                }
            }
            ItemKind::Fn(sig) => self.misplaced(sig.name.span, Placement::Fn),
            ItemKind::Enum { name, .. } => self.misplaced(name.span, Placement::Enum),
        }
    }

    fn lookup(&self, name: &str, stage: Option<usize>) -> Option<EntityId> {
        self.names.lookup(name, stage).map(|(id, _)| id)
    }

    /// Walks every expression; reports unknown names; returns the evaluation order and, per
    /// entity, how often it is referenced.
    fn dependencies(&mut self) -> (Vec<EntityId>, Vec<usize>) {
        let n = self.entities.len();
        // Node `i` is entity `i`; the nodes carry no weight, which keeps the adjacency lists
        // that every edge updates small (see `dag::Builder`).
        let mut graph: DiGraph<(), Span> = DiGraph::with_capacity(n, n);
        let nodes: Vec<NodeIndex> = (0..n).map(|_| graph.add_node(())).collect();
        let mut uses = vec![0usize; n];
        // One buffer for the references of every entity in turn, rather than a new vector each.
        let mut refs = Vec::new();
        for id in 0..n {
            let (stage, value, block) = match self.entities.get(id) {
                Some(e) => (e.stage, e.value, e.block),
                None => continue,
            };
            refs.clear();
            self.walk(value, stage, &mut refs);
            if let Some(b) = block {
                self.walk_fields(b, callee_of(value), stage, &mut refs);
            }
            for &(dep, span) in &refs {
                if let (Some(&a), Some(&b)) = (nodes.get(id), nodes.get(dep)) {
                    graph.add_edge(a, b, span);
                }
                if let Some(u) = uses.get_mut(dep) {
                    *u += 1;
                }
            }
        }
        self.record = false;
        let mut settings: Vec<(Option<usize>, Setting<'a>)> =
            self.top_settings.iter().map(|s| (None, *s)).collect();
        for (i, st) in self.stages.iter().enumerate() {
            settings.extend(st.settings.iter().map(|s| (Some(i), *s)));
        }
        for (stage, s) in settings {
            // Top-level settings are evaluated inside every stage; names they use are looked
            // up from the first stage, or the top level.
            let scope = if stage.is_none()
                && !self.stages.is_empty()
                && self.stages.iter().all(|s| s.name.is_none())
            {
                Some(0)
            } else {
                stage
            };
            let mut refs = Vec::new();
            if let Some(v) = s.value {
                self.walk(v, scope, &mut refs);
            }
            if let Some(b) = s.block {
                // `train { ... }` sets the arguments of the stdlib's `train`; any other
                // setting's block belongs to the function its value names.
                let callee = match s.kind {
                    SettingKind::Train => Some("train"),
                    _ => s.value.and_then(callee_of),
                };
                self.walk_fields(b, callee, scope, &mut refs);
            }
            for (dep, _) in refs {
                if let Some(u) = uses.get_mut(dep) {
                    *u += 1;
                }
            }
        }
        // Tarjan gives strongly connected components dependencies first.
        let sccs = petgraph::algo::tarjan_scc(&graph);
        let mut order = Vec::with_capacity(n);
        for scc in sccs {
            let cyclic = scc.len() > 1
                || scc
                    .first()
                    .is_some_and(|&x| graph.find_edge(x, x).is_some());
            if !cyclic {
                order.extend(scc.iter().map(|ix| ix.index()));
                continue;
            }
            self.report_cycle(&graph, &scc);
        }
        (order, uses)
    }

    fn report_cycle(&mut self, graph: &DiGraph<(), Span>, scc: &[NodeIndex]) {
        let Some(&start) = scc.iter().min_by_key(|ix| ix.index()) else {
            return;
        };
        // Breadth-first search inside the component from `start` back to itself gives the
        // shortest cycle through it.
        let mut parent: HashMap<NodeIndex, (NodeIndex, Span)> = HashMap::new();
        let mut queue = VecDeque::new();
        queue.push_back(start);
        let mut closing = None;
        'search: while let Some(x) = queue.pop_front() {
            let mut edges: Vec<_> = graph
                .edges(x)
                .map(|e| (petgraph::visit::EdgeRef::target(&e), *e.weight()))
                .collect();
            edges.sort_by_key(|(t, _)| t.index());
            for (t, span) in edges {
                if !scc.contains(&t) {
                    continue;
                }
                if t == start {
                    closing = Some((x, span));
                    break 'search;
                }
                if let std::collections::hash_map::Entry::Vacant(v) = parent.entry(t) {
                    v.insert((x, span));
                    queue.push_back(t);
                }
            }
        }
        let Some((last, last_span)) = closing else {
            return;
        };
        let mut path = vec![(last, last_span)];
        let mut at = last;
        while at != start {
            match parent.get(&at) {
                Some(&(p, span)) => {
                    path.push((p, span));
                    at = p;
                }
                None => break,
            }
        }
        path.reverse();
        // path[i] = (node, span of its reference to the next node)
        let name = |ix: NodeIndex| {
            self.entities
                .get(ix.index())
                .map(|e| e.name.name.to_string())
                .unwrap_or_default()
        };
        let mut names: Vec<String> = path.iter().map(|(ix, _)| name(*ix)).collect();
        names.push(name(start));
        let start_span = self
            .entities
            .get(start.index())
            .map(|e| e.name.span)
            .unwrap_or_default();
        let start_name = name(start);
        let problem = ResolveProblem::Cycle {
            start: &start_name,
            path: &names,
        };
        let mut d = problem.at(start_span, "this declaration is on a cycle");
        for (i, (_, span)) in path.iter().enumerate() {
            let to = names.get(i + 1).cloned().unwrap_or_default();
            d = d.label(*span, format!("uses `{to}`"));
        }
        self.diags.push(d);
    }

    fn unknown(&mut self, id: &Ident, stage: Option<usize>, functions_only: bool) {
        // A name an item lost to a syntax error declares is no news, and its did-you-mean,
        // which reads every declared name, would be computed for nothing.
        if self.lost.contains(id.name.as_str()) {
            self.expect = None;
            return;
        }
        // The file's own declarations are guessed before the stdlib's enum members and
        // functions: a misspelt name used as a value is far more often one of them, and an
        // enum member as near (`sum` for `sumz`, meant `sums`) would be the wrong kind of thing.
        // Where the callee's signature says what the argument is, only names of a kind that
        // fits there are guessed (params and lets, whose type resolve does not know, always).
        let want = self.expect.take().and_then(ParamSlot::ty);
        let fits = |have: Ty| {
            want.as_ref()
                .is_none_or(|w| crate::query::accepts(w, &have))
        };
        // The candidates are read in place rather than collected: a file full of unknown
        // names asks this once per error, and a list of every declared name each time cost
        // memory in the product of the two.
        let declared = self
            .entities
            .iter()
            .filter(|e| !functions_only && (e.stage.is_none() || e.stage == stage))
            .filter(|e| match e.kind {
                EntityKind::Decl(k) => fits(Ty::Kind(crate::typecheck::decl_kind(k))),
                _ => true,
            })
            .map(|e| e.name.name.as_str());
        let members = self
            .std
            .enums
            .values()
            .filter(|en| !functions_only && fits(Ty::Enum(en.name.clone())))
            .flat_map(|en| en.members.iter().map(|m| m.as_str()));
        let functions = self.std.fns.keys().map(|k| k.as_str());
        let guess = did_you_mean(&id.name, declared)
            .or_else(|| did_you_mean(&id.name, members))
            .or_else(|| did_you_mean(&id.name, functions));
        let problem = ResolveProblem::UnknownName {
            name: &id.name,
            function: functions_only,
            guess,
        };
        let what = if functions_only { "function" } else { "name" };
        self.diags.push(
            problem
                .at(id.span, format!("not a declared {what}"))
                .fix_name(id.span, &id.name, guess),
        );
    }

    fn walk(&mut self, e: &'a Expr, stage: Option<usize>, refs: &mut Vec<(EntityId, Span)>) {
        // The expected type holds for this expression (and a list's entries) only; the parts
        // of a member access, a call's callee or an operator expect nothing known here.
        let expect = self.expect.take();
        match &e.kind {
            ExprKind::Int(_)
            | ExprKind::Float(_)
            | ExprKind::Percent(_)
            | ExprKind::Str(_)
            | ExprKind::Bool(_) => {}
            ExprKind::List(items) => {
                for i in items {
                    self.expect = expect;
                    self.walk(i, stage, refs);
                }
            }
            ExprKind::Name(id) => {
                let found = self.lookup(&id.name, stage);
                if self.record {
                    self.recorded.insert(node_key(id), found);
                }
                if let Some(t) = found {
                    refs.push((t, id.span));
                } else if !self.std.fns.contains_key(id.name.as_str())
                    && !self.std.is_enum_member(&id.name)
                {
                    self.expect = expect;
                    self.unknown(id, stage, false);
                }
            }
            ExprKind::Member { base, .. } => self.walk(base, stage, refs),
            ExprKind::Call { func, args } => {
                if let Some(t) = self.lookup(&func.name, stage) {
                    let kind = self.entities.get(t).map(|e| e.kind);
                    let what = match kind {
                        Some(EntityKind::Decl(k)) => format!("a {}", k.keyword()),
                        Some(EntityKind::Param) => "a param".to_string(),
                        _ => "a `let`".to_string(),
                    };
                    self.diags.push(
                        ResolveProblem::NotAFunction {
                            name: &func.name,
                            what,
                        }
                        .at(func.span, "cannot be called"),
                    );
                } else if !self.std.fns.contains_key(func.name.as_str()) {
                    self.unknown(func, stage, true);
                }
                if func.name == "static" {
                    self.weight_sources(args, stage);
                }
                self.walk_args(&func.name, args, stage, refs);
            }
            ExprKind::Method {
                receiver,
                name,
                args,
            } => {
                self.walk(receiver, stage, refs);
                if !self.std.fns.contains_key(name.name.as_str()) {
                    self.unknown(name, stage, true);
                }
                self.walk_args(&name.name, args, stage, refs);
            }
            ExprKind::Neg(inner) => self.walk(inner, stage, refs),
            ExprKind::Binary { lhs, rhs, .. } => {
                self.walk(lhs, stage, refs);
                self.walk(rhs, stage, refs);
            }
        }
    }

    /// Walks the fields of a block, each expected to be the callee's parameter of its name.
    fn walk_fields(
        &mut self,
        block: &'a Block,
        callee: Option<&'a str>,
        stage: Option<usize>,
        refs: &mut Vec<(EntityId, Span)>,
    ) {
        for f in &block.fields {
            self.expect = callee.map(|function| ParamSlot {
                function,
                name: Some(&f.name.name),
                index: 0,
            });
            self.walk(&f.value, stage, refs);
        }
    }

    fn walk_args(
        &mut self,
        function: &'a str,
        args: &'a Args,
        stage: Option<usize>,
        refs: &mut Vec<(EntityId, Span)>,
    ) {
        for (i, a) in args.positional.iter().enumerate() {
            self.expect = Some(ParamSlot {
                function,
                name: None,
                index: i,
            });
            self.walk(a, stage, refs);
        }
        for a in &args.named {
            self.expect = Some(ParamSlot {
                function,
                name: Some(&a.name.name),
                index: 0,
            });
            self.walk(&a.value, stage, refs);
        }
    }

    /// Each `source.term` key of a `static(...)` call names a declared source before its dot;
    /// the term after it is checked by validate, which knows the objectives' reward terms.
    fn weight_sources(&mut self, args: &Args, stage: Option<usize>) {
        for a in &args.named {
            let Some((source, _)) = a.name.name.split_once('.') else {
                continue;
            };
            let is_source = |id: EntityId| {
                self.entities.get(id).map(|e| e.kind) == Some(EntityKind::Decl(DeclKind::Source))
            };
            if self.lookup(source, stage).is_some_and(is_source) {
                continue;
            }
            let sources = self
                .entities
                .iter()
                .filter(|e| e.kind == EntityKind::Decl(DeclKind::Source))
                .map(|e| e.name.name.as_str());
            let guess = did_you_mean(source, sources);
            let problem = ResolveProblem::UnknownWeightSource {
                key: &a.name.name,
                source,
                guess,
            };
            // The key starts with the source's name, so the name's span is the key's first
            // bytes.
            let at = a.name.span.start();
            let source_span = Span::new(at, at + source.len());
            self.diags
                .push(problem.at(a.name.span, "no such source").fix_name(
                    source_span,
                    source,
                    guess,
                ));
        }
    }

    fn unused(&mut self, uses: &[usize]) {
        for (id, e) in self.entities.iter().enumerate() {
            let what = match e.kind {
                EntityKind::Param => "param",
                EntityKind::Let => "let",
                EntityKind::Decl(DeclKind::Source) => "source",
                EntityKind::Decl(DeclKind::Verifier) => "verifier",
                // Models are used by being trained or frozen; objectives and evals are what
                // a job runs, so they are used by being declared.
                _ => continue,
            };
            if uses.get(id).copied().unwrap_or(0) == 0 && !e.name.name.starts_with('_') {
                self.diags.push(
                    ResolveProblem::Unused {
                        what,
                        name: &e.name.name,
                    }
                    .at(e.name.span, "declared here, used nowhere"),
                );
            }
        }
    }
}
