//! Run directories lose nothing: a new run refuses a directory holding another run or a
//! user's files unless told to overwrite, and then replaces only recap's own files; two runs
//! cannot share a directory; resume replaces `metrics.jsonl` rather than rewriting it in place;
//! no file of the run directory is written through a symbolic link.

mod rundir {
    use std::path::Path;

    use recap_plan::*;
    use recap_runtime::engine::presets::{self, seal};
    use recap_runtime::engine::{run, ProgressMode, RunOptions, RunSummary};

    fn opts(dir: &Path) -> RunOptions {
        RunOptions {
            out: Some(dir.to_path_buf()),
            progress: ProgressMode::Quiet,
            base_dir: dir.to_path_buf(),
            samples_every: 1,
            ..RunOptions::default()
        }
    }

    /// Two stages of `warmup` and `rl` steps, a checkpoint every 2 steps, the newest 2 kept.
    fn plan(warmup: u64, rl: u64) -> Plan {
        let mut plan = presets::quickstart("unused", warmup, rl);
        for st in &mut plan.stages {
            st.train.checkpoint = Some(Checkpoint {
                every: 2,
                keep: Some(2),
            });
            st.train.prompts_per_step = 2;
            st.evals.clear();
        }
        seal(plan)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_new_run_refuses_a_directory_holding_another_run() {
        let dir = tempfile::tempdir().unwrap();
        run(&plan(3, 5), &opts(dir.path())).unwrap();
        let before = names(&dir.path().join("checkpoints"));
        let metrics = std::fs::read(dir.path().join("metrics.jsonl")).unwrap();
        let err = run(&plan(1, 2), &opts(dir.path())).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&dir.path().display().to_string())
                && msg.contains("--resume")
                && msg.contains("--overwrite"),
            "{msg}"
        );
        assert_eq!(names(&dir.path().join("checkpoints")), before);
        assert_eq!(
            std::fs::read(dir.path().join("metrics.jsonl")).unwrap(),
            metrics
        );
    }

    #[test]
    fn a_new_run_refuses_a_user_directory_and_touches_nothing() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("final")).unwrap();
        std::fs::write(dir.path().join("final/mine.txt"), "mine").unwrap();
        std::fs::write(dir.path().join("metrics.jsonl"), "my notes\n").unwrap();
        let err = run(&plan(1, 1), &opts(dir.path())).unwrap_err();
        assert!(format!("{err:#}").contains("--overwrite"), "{err:#}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("final/mine.txt")).unwrap(),
            "mine"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap(),
            "my notes\n"
        );
    }

    #[test]
    fn overwrite_replaces_only_the_earlier_runs_files_and_its_checkpoints_are_its_own() {
        let dir = tempfile::tempdir().unwrap();
        run(&plan(3, 5), &opts(dir.path())).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        std::fs::write(dir.path().join("checkpoints/README"), "mine").unwrap();
        let saved = tempfile::tempdir().unwrap();
        let foreign = saved.path().join("step-000007");
        std::fs::rename(dir.path().join("checkpoints/step-000007"), &foreign).unwrap();
        // The shorter run B, killed after its step 3, with the newest checkpoint at step 2.
        let b = plan(2, 3);
        run(
            &b,
            &RunOptions {
                overwrite: true,
                stop_after: Some(3),
                ..opts(dir.path())
            },
        )
        .unwrap();
        assert_eq!(
            names(dir.path()),
            [
                ".recap-lock",
                "checkpoints",
                "metrics.jsonl",
                "notes.txt",
                "plan.json",
                "run.json",
                "samples.jsonl"
            ]
        );
        assert_eq!(
            names(&dir.path().join("checkpoints")),
            ["README", "step-000002"]
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("metrics.jsonl"))
                .unwrap()
                .lines()
                .count(),
            3
        );
        // A newer checkpoint of the other run put back beside B's is neither resumed from nor
        // pruned by B, which ends holding its checkpoints of steps 4 and 5 (its end).
        std::fs::rename(&foreign, dir.path().join("checkpoints/step-000007")).unwrap();
        resume(&b, dir.path());
        assert_eq!(
            names(&dir.path().join("checkpoints")),
            ["README", "step-000004", "step-000005", "step-000007"]
        );
        assert!(dir.path().join("final/model.safetensors").exists());
        assert_eq!(
            std::fs::read_to_string(dir.path().join("notes.txt")).unwrap(),
            "mine"
        );
    }

    #[test]
    fn a_second_run_into_a_locked_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        // The lock a running run holds, taken here by hand.
        let lock = std::fs::File::create(dir.path().join(".recap-lock")).unwrap();
        lock.try_lock().unwrap();
        let err = run(&plan(1, 1), &opts(dir.path())).unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains(&dir.path().display().to_string()) && msg.contains("another run"),
            "{msg}"
        );
        assert!(!dir.path().join("metrics.jsonl").exists());
    }

    /// Kills a run after step 3 (its newest checkpoint is at step 2) so that it can be resumed.
    fn cut_run(dir: &Path) -> Plan {
        let p = plan(2, 3);
        let s = run(
            &p,
            &RunOptions {
                stop_after: Some(3),
                ..opts(dir)
            },
        )
        .unwrap();
        assert_eq!(s.steps, 3);
        p
    }

    fn resume(p: &Plan, dir: &Path) -> RunSummary {
        let s = run(p, &resume_opts(dir)).unwrap();
        assert_eq!(s.steps, 5);
        s
    }

    fn resume_opts(dir: &Path) -> RunOptions {
        RunOptions {
            resume: Some(dir.to_path_buf()),
            ..opts(dir)
        }
    }

    /// Moves `dir/name` to a new directory and links it back; gives that directory (which
    /// must live as long as the link is used) and the moved path.
    #[cfg(unix)]
    fn link_away(dir: &Path, name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let elsewhere = tempfile::tempdir().unwrap();
        let moved = elsewhere.path().join(name);
        std::fs::rename(dir.join(name), &moved).unwrap();
        std::os::unix::fs::symlink(&moved, dir.join(name)).unwrap();
        (elsewhere, moved)
    }

    #[test]
    fn resume_replaces_metrics_rather_than_rewriting_them_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let p = cut_run(dir.path());
        // A second name for the old history: rewriting the file in place would cut it too.
        let keep = tempfile::tempdir().unwrap();
        let copy = keep.path().join("metrics-backup.jsonl");
        std::fs::hard_link(dir.path().join("metrics.jsonl"), &copy).unwrap();
        let old = std::fs::read_to_string(&copy).unwrap();
        assert_eq!(old.lines().count(), 3);
        resume(&p, dir.path());
        assert_eq!(std::fs::read_to_string(&copy).unwrap(), old);
        let new = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
        assert_eq!(new.lines().count(), 5);
        assert!(new.starts_with(old.lines().next().unwrap()));
    }

    #[cfg(unix)]
    #[test]
    fn files_of_the_run_directory_are_never_written_through_links() {
        let dir = tempfile::tempdir().unwrap();
        let p = cut_run(dir.path());
        let elsewhere = tempfile::tempdir().unwrap();
        for name in ["metrics.jsonl", "samples.jsonl", "plan.json"] {
            let target = elsewhere.path().join(name);
            std::fs::write(&target, "precious\n").unwrap();
            std::fs::remove_file(dir.path().join(name)).unwrap();
            std::os::unix::fs::symlink(&target, dir.path().join(name)).unwrap();
        }
        resume(&p, dir.path());
        for name in ["metrics.jsonl", "samples.jsonl", "plan.json"] {
            assert_eq!(
                std::fs::read_to_string(elsewhere.path().join(name)).unwrap(),
                "precious\n",
                "{name}"
            );
            let meta = std::fs::symlink_metadata(dir.path().join(name)).unwrap();
            assert!(meta.file_type().is_file(), "{name} is a regular file again");
        }
        assert_eq!(
            std::fs::read_to_string(dir.path().join("plan.json")).unwrap(),
            p.to_json() + "\n"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_run_directory_whose_checkpoints_are_a_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = cut_run(dir.path());
        let (_elsewhere, moved) = link_away(dir.path(), "checkpoints");
        let before = names(&moved);
        let err = run(&p, &resume_opts(dir.path())).unwrap_err();
        assert!(format!("{err:#}").contains("symbolic link"), "{err:#}");
        assert_eq!(names(&moved), before);
    }

    #[cfg(unix)]
    #[test]
    fn a_run_marker_that_is_a_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = cut_run(dir.path());
        let _elsewhere = link_away(dir.path(), "run.json");
        let err = run(&p, &resume_opts(dir.path())).unwrap_err();
        assert!(format!("{err:#}").contains("not a regular file"), "{err:#}");
    }

    /// A damaged newest checkpoint (its weights cut short, as a full disk or a torn copy leaves
    /// them) is passed over: the run resumes from the one before and ends as an uninterrupted
    /// run does.
    #[test]
    fn a_damaged_newest_checkpoint_falls_back_to_the_previous_one() {
        let p = plan(2, 3);
        let full = tempfile::tempdir().unwrap();
        run(&p, &opts(full.path())).unwrap();
        let dir = tempfile::tempdir().unwrap();
        run(
            &p,
            &RunOptions {
                stop_after: Some(4),
                ..opts(dir.path())
            },
        )
        .unwrap();
        let weights = dir.path().join("checkpoints/step-000004/model.safetensors");
        let bytes = std::fs::read(&weights).unwrap();
        std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
        let s = resume(&p, dir.path());
        assert_eq!(s.metrics.len(), 3, "resumed from step 2");
        let a = std::fs::read(full.path().join("final/model.safetensors")).unwrap();
        let b = std::fs::read(dir.path().join("final/model.safetensors")).unwrap();
        assert!(a == b, "final weights differ after the fallback");
    }

    /// Two identical runs write identical checkpoints, the optimiser's state and its metadata
    /// included, so checkpoints can be compared (and deduplicated) byte for byte.
    #[test]
    fn identical_runs_write_identical_optimizer_states() {
        let p = plan(2, 1);
        let states: Vec<Vec<u8>> = (0..2)
            .map(|_| {
                let dir = tempfile::tempdir().unwrap();
                run(&p, &opts(dir.path())).unwrap();
                std::fs::read(
                    dir.path()
                        .join("checkpoints/step-000003/optimizer.safetensors"),
                )
                .unwrap()
            })
            .collect();
        assert!(states[0] == states[1], "the optimiser states differ");
    }
}
