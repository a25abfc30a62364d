//! Where this process sits in a data-parallel job: takes the environment variables a launcher
//! sets (torchrun, Slurm's `srun`, Open MPI's `mpirun`), gives a [`Topology`] (rank, world,
//! local rank, and the address of rank 0's store).
//!
//! The variables are read through a lookup function, so the parsing is tested on plain maps
//! without touching the process environment. When several launchers' variables are present the
//! most specific wins: torchrun's (which a user may start inside a Slurm or MPI allocation),
//! then Open MPI's, then Slurm's. When none is set the job is a world of one.

use std::collections::HashMap;
use std::fmt;

use anyhow::{anyhow, bail, Result};

/// The port of rank 0's store when `MASTER_PORT` is not set under torchrun-style variables or
/// Open MPI: torchrun's own default.
pub const DEFAULT_PORT: u16 = 29500;

/// Under Slurm without `MASTER_PORT` the port is `SLURM_BASE_PORT + SLURM_JOB_ID % 10000`, so
/// two jobs that share a node do not collide on one fixed port.
pub const SLURM_BASE_PORT: u16 = 20000;

/// Which launcher started this process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    /// No launcher: a world of one.
    None,
    /// torchrun's variables (`RANK`, `WORLD_SIZE`, ...), which `recapc run --ranks N` also sets.
    Torchrun,
    /// Slurm's `srun` (`SLURM_PROCID`, `SLURM_NTASKS`, ...).
    Slurm,
    /// Open MPI's `mpirun` (`OMPI_COMM_WORLD_RANK`, ...).
    OpenMpi,
}

impl fmt::Display for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Launcher::None => "no launcher",
            Launcher::Torchrun => "torchrun",
            Launcher::Slurm => "Slurm",
            Launcher::OpenMpi => "Open MPI",
        })
    }
}

/// This process's place in the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// This process's rank, `0..world`.
    pub rank: usize,
    /// The number of ranks in the job.
    pub world: usize,
    /// The rank among the processes of this node; it picks the GPU (`cuda:LOCAL_RANK`).
    pub local_rank: usize,
    /// The host of rank 0, where its store listens (empty in a world of one).
    pub master_addr: String,
    /// The port of rank 0's store.
    pub master_port: u16,
    /// Which launcher's variables these came from.
    pub launcher: Launcher,
}

impl Topology {
    /// A job of one rank, as when no launcher is set.
    pub fn single() -> Topology {
        Topology {
            rank: 0,
            world: 1,
            local_rank: 0,
            master_addr: String::new(),
            master_port: DEFAULT_PORT,
            launcher: Launcher::None,
        }
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Topology> {
        Topology::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the variables of `vars`, as if they were the whole environment.
    pub fn from_map(vars: &HashMap<String, String>) -> Result<Topology> {
        Topology::from_lookup(|k| vars.get(k).cloned())
    }

    /// Reads each variable through `get` (None: not set). An empty value counts as not set, as
    /// `VAR= recapc run` is a common way to clear a variable.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Topology> {
        let get = |k: &str| get(k).filter(|v| !v.trim().is_empty());
        let vars = Vars { get: &get };
        if vars.any(&["RANK", "WORLD_SIZE", "LOCAL_RANK"]) {
            vars.torchrun()
        } else if vars.any(&["OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"]) {
            vars.open_mpi()
        } else if vars.any(&["SLURM_PROCID", "SLURM_NTASKS"]) {
            vars.slurm()
        } else {
            Ok(Topology::single())
        }
    }

    /// The device this rank runs on, given the one asked for: `cuda` (no index) means
    /// `cuda:LOCAL_RANK`, one GPU per local rank; anything else is used as written.
    pub fn device_name(&self, requested: &str) -> String {
        if requested == "cuda" && self.world > 1 {
            format!("cuda:{}", self.local_rank)
        } else {
            requested.to_string()
        }
    }
}

/// The environment as the parsers see it.
struct Vars<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl Vars<'_> {
    fn any(&self, names: &[&str]) -> bool {
        names.iter().any(|n| (self.get)(n).is_some())
    }

    /// A variable that must be set, since `siblings` (of the same launcher) are.
    fn required(&self, name: &str, launcher: Launcher, siblings: &[&str]) -> Result<String> {
        (self.get)(name).ok_or_else(|| {
            let set: Vec<&str> = siblings
                .iter()
                .copied()
                .filter(|s| (self.get)(s).is_some())
                .collect();
            let verb = if set.len() == 1 { "is" } else { "are" };
            anyhow!(
                "{} {verb} set but {name} is not: a job started by {launcher} needs all of {}",
                set.join(" and "),
                siblings.join(", ")
            )
        })
    }

    fn number(&self, name: &str, value: &str) -> Result<usize> {
        value
            .trim()
            .parse()
            .map_err(|_| anyhow!("{name}=`{value}` is not a non-negative whole number"))
    }

    fn port(&self, name: &str, value: &str) -> Result<u16> {
        value
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| anyhow!("{name}=`{value}` is not a port (1 to 65535)"))
    }

    fn torchrun(&self) -> Result<Topology> {
        let names = ["RANK", "WORLD_SIZE", "LOCAL_RANK"];
        let launcher = Launcher::Torchrun;
        let rank = self.number("RANK", &self.required("RANK", launcher, &names)?)?;
        let world = self.number(
            "WORLD_SIZE",
            &self.required("WORLD_SIZE", launcher, &names)?,
        )?;
        // A world of one needs no local rank; a larger one does, or every rank would pick the
        // same GPU.
        let local_rank = match (self.get)("LOCAL_RANK") {
            Some(v) => self.number("LOCAL_RANK", &v)?,
            None if world <= 1 => 0,
            None => self.number(
                "LOCAL_RANK",
                &self.required("LOCAL_RANK", launcher, &names)?,
            )?,
        };
        let port = self.master_port(DEFAULT_PORT)?;
        self.finish(rank, world, local_rank, None, port, launcher)
    }

    fn open_mpi(&self) -> Result<Topology> {
        let names = [
            "OMPI_COMM_WORLD_RANK",
            "OMPI_COMM_WORLD_SIZE",
            "OMPI_COMM_WORLD_LOCAL_RANK",
        ];
        let launcher = Launcher::OpenMpi;
        let field = |name: &str| -> Result<usize> {
            self.number(name, &self.required(name, launcher, &names)?)
        };
        let (rank, world, local_rank) = (field(names[0])?, field(names[1])?, field(names[2])?);
        let port = self.master_port(DEFAULT_PORT)?;
        self.finish(rank, world, local_rank, None, port, launcher)
    }

    fn slurm(&self) -> Result<Topology> {
        let names = ["SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"];
        let launcher = Launcher::Slurm;
        let field = |name: &str| -> Result<usize> {
            self.number(name, &self.required(name, launcher, &names)?)
        };
        let (rank, world, local_rank) = (field(names[0])?, field(names[1])?, field(names[2])?);
        // Rank 0 of a step runs on the first node of the step; the job's list stands in where
        // the step's is not set (an older Slurm).
        let nodes = [
            "SLURM_STEP_NODELIST",
            "SLURM_JOB_NODELIST",
            "SLURM_NODELIST",
        ]
        .iter()
        .find_map(|n| (self.get)(n).map(|v| (*n, v)));
        let first = match nodes {
            Some((name, list)) => Some(
                first_host(&list)
                    .map_err(|e| anyhow!("{name}=`{list}` is not a host list: {e}"))?,
            ),
            None => None,
        };
        let default_port = match (self.get)("SLURM_JOB_ID") {
            Some(id) => {
                let id = self.number("SLURM_JOB_ID", &id)?;
                SLURM_BASE_PORT + (id % 10_000) as u16
            }
            None => DEFAULT_PORT,
        };
        let port = self.master_port(default_port)?;
        self.finish(rank, world, local_rank, first, port, launcher)
    }

    fn master_port(&self, default: u16) -> Result<u16> {
        match (self.get)("MASTER_PORT") {
            Some(p) => self.port("MASTER_PORT", &p),
            None => Ok(default),
        }
    }

    /// Checks the numbers against each other and settles the master address: `MASTER_ADDR`
    /// when set, else `fallback` (Slurm's first node), else an error for a world above one.
    fn finish(
        &self,
        rank: usize,
        world: usize,
        local_rank: usize,
        fallback: Option<String>,
        master_port: u16,
        launcher: Launcher,
    ) -> Result<Topology> {
        if world == 0 {
            bail!("the {launcher} variables give a world of 0 ranks");
        }
        if rank >= world {
            bail!("the {launcher} variables give rank {rank} in a world of {world} ranks (ranks are 0 to {})", world - 1);
        }
        if local_rank >= world {
            bail!(
                "the {launcher} variables give local rank {local_rank} in a world of {world} ranks"
            );
        }
        let master_addr = match (self.get)("MASTER_ADDR").or(fallback) {
            Some(a) => a.trim().to_string(),
            None if world == 1 => String::new(),
            None => bail!(
                "a job of {world} ranks started by {launcher} needs MASTER_ADDR (the host of rank 0) to meet at"
            ),
        };
        Ok(Topology {
            rank,
            world,
            local_rank,
            master_addr,
            master_port,
            launcher,
        })
    }
}

/// The first host of a Slurm host list in its compressed form: `node[01-04,07]` gives
/// `node01`, `a1,b[2-3]` gives `a1`, `rack[1-2]-gpu[3,5]` gives `rack1-gpu3`.
pub fn first_host(list: &str) -> Result<String> {
    let list = list.trim();
    // The first entry ends at the first comma outside brackets.
    let mut depth = 0usize;
    let mut end = list.len();
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| anyhow!("a `]` without its `[`"))?
            }
            ',' if depth == 0 => {
                end = i;
                break;
            }
            _ => {}
        }
    }
    let entry = &list[..end];
    if entry.is_empty() {
        bail!("no host before the first comma");
    }
    // Each bracket stands for its first value: the start of its first range, zero padding kept.
    let mut host = String::new();
    let mut rest = entry;
    while let Some(open) = rest.find('[') {
        host.push_str(&rest[..open]);
        let close = rest[open..]
            .find(']')
            .map(|c| open + c)
            .ok_or_else(|| anyhow!("a `[` without its `]`"))?;
        let inner = &rest[open + 1..close];
        let first = inner.split(',').next().unwrap_or("");
        let start = first.split('-').next().unwrap_or("").trim();
        if start.is_empty() || !start.chars().all(|c| c.is_ascii_digit()) {
            bail!("`[{inner}]` does not start with a number");
        }
        host.push_str(start);
        rest = &rest[close + 1..];
    }
    if rest.contains(']') {
        bail!("a `]` without its `[`");
    }
    host.push_str(rest);
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(vars: &[(&str, &str)]) -> Result<Topology> {
        let map = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Topology::from_map(&map)
    }

    fn err(vars: &[(&str, &str)]) -> String {
        format!("{:#}", parse(vars).unwrap_err())
    }

    #[test]
    fn no_launcher_is_a_world_of_one() {
        assert_eq!(parse(&[]).unwrap(), Topology::single());
        assert_eq!(parse(&[("PATH", "/bin"), ("RANK", "")]).unwrap().world, 1);
    }

    #[test]
    fn torchrun_variables() {
        let t = parse(&[
            ("RANK", "5"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node01"),
            ("MASTER_PORT", "29400"),
        ])
        .unwrap();
        assert_eq!(
            t,
            Topology {
                rank: 5,
                world: 8,
                local_rank: 1,
                master_addr: "node01".into(),
                master_port: 29400,
                launcher: Launcher::Torchrun,
            }
        );
        assert_eq!(t.device_name("cuda"), "cuda:1");
        assert_eq!(t.device_name("cuda:3"), "cuda:3");
        assert_eq!(t.device_name("cpu"), "cpu");
        // torchrun's default port when MASTER_PORT is left out.
        let t = parse(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "2"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "h"),
        ])
        .unwrap();
        assert_eq!(t.master_port, DEFAULT_PORT);
        // A world of one needs neither a master nor a local rank.
        let t = parse(&[("RANK", "0"), ("WORLD_SIZE", "1")]).unwrap();
        assert_eq!(
            (t.world, t.local_rank, t.launcher),
            (1, 0, Launcher::Torchrun)
        );
    }

    #[test]
    fn torchrun_refuses_partial_and_inconsistent_settings() {
        assert_eq!(
            err(&[("RANK", "1")]),
            "RANK is set but WORLD_SIZE is not: a job started by torchrun needs all of RANK, WORLD_SIZE, LOCAL_RANK"
        );
        assert!(
            err(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")])
                .contains("LOCAL_RANK is not")
        );
        assert_eq!(
            err(&[
                ("RANK", "2"),
                ("WORLD_SIZE", "2"),
                ("LOCAL_RANK", "0"),
                ("MASTER_ADDR", "h")
            ]),
            "the torchrun variables give rank 2 in a world of 2 ranks (ranks are 0 to 1)"
        );
        assert_eq!(
            err(&[("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1")]),
            "a job of 2 ranks started by torchrun needs MASTER_ADDR (the host of rank 0) to meet at"
        );
        assert_eq!(
            err(&[("RANK", "one"), ("WORLD_SIZE", "2")]),
            "RANK=`one` is not a non-negative whole number"
        );
        assert_eq!(
            err(&[("RANK", "0"), ("WORLD_SIZE", "0")]),
            "the torchrun variables give a world of 0 ranks"
        );
        assert_eq!(
            err(&[
                ("RANK", "0"),
                ("WORLD_SIZE", "2"),
                ("LOCAL_RANK", "0"),
                ("MASTER_ADDR", "h"),
                ("MASTER_PORT", "70000")
            ]),
            "MASTER_PORT=`70000` is not a port (1 to 65535)"
        );
    }

    #[test]
    fn slurm_variables() {
        let t = parse(&[
            ("SLURM_PROCID", "3"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "3"),
            ("SLURM_JOB_NODELIST", "gpu[07-08,11]"),
            ("SLURM_JOB_ID", "123456"),
        ])
        .unwrap();
        assert_eq!(
            t,
            Topology {
                rank: 3,
                world: 16,
                local_rank: 3,
                master_addr: "gpu07".into(),
                master_port: SLURM_BASE_PORT + 3456,
                launcher: Launcher::Slurm,
            }
        );
        // The step's node list wins over the job's; MASTER_ADDR and MASTER_PORT win over both.
        let base = [
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "2"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_JOB_NODELIST", "a1,b[2-3]"),
        ];
        assert_eq!(parse(&base).unwrap().master_addr, "a1");
        assert_eq!(parse(&base).unwrap().master_port, DEFAULT_PORT);
        let mut step = base.to_vec();
        step.push(("SLURM_STEP_NODELIST", "b[3]"));
        assert_eq!(parse(&step).unwrap().master_addr, "b3");
        step.extend([("MASTER_ADDR", "10.0.0.1"), ("MASTER_PORT", "1234")]);
        let t = parse(&step).unwrap();
        assert_eq!((t.master_addr.as_str(), t.master_port), ("10.0.0.1", 1234));
    }

    #[test]
    fn slurm_refuses_partial_settings_and_bad_lists() {
        assert!(err(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "2")]).contains(
            "SLURM_PROCID and SLURM_NTASKS are set but SLURM_LOCALID is not: a job started by Slurm needs all of"
        ));
        assert_eq!(
            err(&[
                ("SLURM_PROCID", "0"),
                ("SLURM_NTASKS", "2"),
                ("SLURM_LOCALID", "0")
            ]),
            "a job of 2 ranks started by Slurm needs MASTER_ADDR (the host of rank 0) to meet at"
        );
        assert_eq!(
            err(&[
                ("SLURM_PROCID", "0"),
                ("SLURM_NTASKS", "2"),
                ("SLURM_LOCALID", "0"),
                ("SLURM_JOB_NODELIST", "node[01-04"),
            ]),
            "SLURM_JOB_NODELIST=`node[01-04` is not a host list: a `[` without its `]`"
        );
    }

    #[test]
    fn open_mpi_variables() {
        let t = parse(&[
            ("OMPI_COMM_WORLD_RANK", "1"),
            ("OMPI_COMM_WORLD_SIZE", "4"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ("MASTER_ADDR", "head"),
            // Slurm's variables are present when mpirun runs inside an allocation; MPI's win.
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "1"),
        ])
        .unwrap();
        assert_eq!(
            (t.rank, t.world, t.local_rank, t.launcher),
            (1, 4, 1, Launcher::OpenMpi)
        );
        assert_eq!(
            (t.master_addr.as_str(), t.master_port),
            ("head", DEFAULT_PORT)
        );
        assert_eq!(
            err(&[
                ("OMPI_COMM_WORLD_RANK", "1"),
                ("OMPI_COMM_WORLD_SIZE", "4"),
                ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
            ]),
            "a job of 4 ranks started by Open MPI needs MASTER_ADDR (the host of rank 0) to meet at"
        );
    }

    #[test]
    fn torchrun_wins_over_the_allocation_around_it() {
        let t = parse(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("SLURM_PROCID", "0"),
            ("SLURM_NTASKS", "4"),
            ("SLURM_LOCALID", "0"),
        ])
        .unwrap();
        assert_eq!((t.world, t.launcher), (1, Launcher::Torchrun));
    }

    #[test]
    fn first_hosts_of_compressed_lists() {
        for (list, first) in [
            ("node01", "node01"),
            ("node[01-04,07]", "node01"),
            ("node[07,01-04]", "node07"),
            ("a1,b[2-3]", "a1"),
            ("b[2-3],a1", "b2"),
            ("rack[1-2]-gpu[003-005]", "rack1-gpu003"),
            (" h ", "h"),
        ] {
            assert_eq!(first_host(list).unwrap(), first, "{list}");
        }
        for bad in ["", ",a", "node[]", "node[a-b]", "node]1[", "node[1"] {
            assert!(first_host(bad).is_err(), "{bad}");
        }
    }
}
