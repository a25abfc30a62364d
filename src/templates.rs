//! The templates behind `recapc new`: the pipelines at the top of `pipelines/`, embedded in the
//! binary with `include_str!` so `recapc new` works anywhere. Takes a template name, gives its
//! text and a one-line description (the file's first comment line). The benchmark pipelines in
//! `pipelines/bench/` name files beside the repository and so are not templates; a test checks
//! that every other file in `pipelines/` is listed here.

/// One embedded template.
#[derive(Debug, Clone, Copy)]
pub struct Template {
    /// The name `recapc new --template NAME` takes: the file name without `.recap`.
    pub name: &'static str,
    /// The path of the file inside the repository.
    pub path: &'static str,
    /// The file's text.
    pub text: &'static str,
}

/// Every template, the default (`quickstart`) first.
pub const TEMPLATES: &[Template] = &[
    Template {
        name: "quickstart",
        path: "pipelines/quickstart.recap",
        text: include_str!("../pipelines/quickstart.recap"),
    },
    Template {
        name: "gsm8k-recap",
        path: "pipelines/gsm8k-recap.recap",
        text: include_str!("../pipelines/gsm8k-recap.recap"),
    },
];

impl Template {
    /// The first line of the leading comment, without `#`, as a description.
    pub fn description(&self) -> &'static str {
        self.text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .and_then(|l| l.strip_prefix('#'))
            .map(|l| l.trim_start_matches('#').trim())
            .unwrap_or("")
    }

    /// The template's text for a new pipeline called `name`: its output directory
    /// `runs/<template>` becomes `runs/<name>`, so two pipelines do not share a run directory.
    pub fn instantiate(&self, name: &str) -> String {
        self.text.replace(
            &format!("\"runs/{}\"", self.name),
            &format!("\"runs/{name}\""),
        )
    }
}

/// Finds a template by name (`quickstart`, or with `.recap`).
pub fn find(name: &str) -> Option<&'static Template> {
    let name = name.strip_suffix(".recap").unwrap_or(name);
    TEMPLATES.iter().find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_top_level_pipeline_is_a_template() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "recap"))
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut listed: Vec<String> = TEMPLATES.iter().map(|t| t.name.to_string()).collect();
        listed.sort();
        assert_eq!(on_disk, listed, "pipelines/*.recap and TEMPLATES differ");
        for t in TEMPLATES {
            assert_eq!(t.path, format!("pipelines/{}.recap", t.name));
            assert!(!t.description().is_empty(), "{} has no description", t.name);
        }
    }

    #[test]
    fn instantiate_renames_the_run_directory() {
        let t = find("quickstart").unwrap();
        assert!(t.text.contains("\"runs/quickstart\""));
        let text = t.instantiate("mine");
        assert!(text.contains("\"runs/mine\""));
        assert!(!text.contains("\"runs/quickstart\""));
        assert!(find("quickstart.recap").is_some());
        assert!(find("nope").is_none());
    }
}
