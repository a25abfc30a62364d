fn main() {
    let path = std::env::args().nth(1).unwrap_or_default();
    let src = std::fs::read_to_string(&path).unwrap_or_default();
    let out = recap_compiler::check(&path, &src, &Default::default(), &recap_compiler::AssumeFilesExist);
    for d in &out.diagnostics {
        let (l, c) = recap_compiler::line_col(&src, d.primary_span().start);
        println!("{l}:{c} {:?}[{}] {} | {:?} | {:?}", d.severity, d.code, d.message, d.labels.iter().map(|l| (&src[l.span.start..l.span.end], &l.message)).collect::<Vec<_>>(), d.help);
    }
    if let Some(p) = out.plan { println!("{}", p.to_json()); println!("{}", recap_compiler::render_graph(&p, recap_compiler::GraphFormat::Text)); }
}
