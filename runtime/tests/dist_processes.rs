//! Ranks as separate processes on loopback: the store's rendezvous (and its error naming the
//! rank that never came) and the TCP collective, whose sums must be bit-identical to the thread
//! group's. Each rank is this test binary started again on one of the `#[ignore]`d `child_*`
//! tests, with the launcher variables a torchrun would set, so the ranks also read their places
//! through `Topology::from_env`.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use recap_runtime::dist::store::{rendezvous, Store};
use recap_runtime::dist::{Collective, TcpGroup, ThreadGroup, Timeouts, Topology};

const LOCAL: &str = "127.0.0.1";

/// Where a child writes what it computed (set only in children).
const OUT: &str = "RECAP_TEST_OUT";
/// What a rendezvous child expects: `ok`, or the error's text.
const EXPECT: &str = "RECAP_TEST_EXPECT";

fn free_port() -> u16 {
    TcpListener::bind((LOCAL, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts rank `rank` of `world` as a child process running the test `child`.
fn spawn_rank(child: &str, rank: usize, world: usize, port: u16, env: &[(&str, &str)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        child,
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env("RANK", rank.to_string())
    .env("WORLD_SIZE", world.to_string())
    .env("LOCAL_RANK", rank.to_string())
    .env("MASTER_ADDR", LOCAL)
    .env("MASTER_PORT", port.to_string())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Waits for a child and fails the test with its output if it failed.
fn expect_success(child: Child, what: &str) {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn timeouts(secs: f64) -> Timeouts {
    Timeouts {
        connect: Duration::from_secs_f64(secs),
        op: Duration::from_secs_f64(secs),
    }
}

#[test]
#[ignore = "a rank of rendezvous_of_several_processes; started by it"]
fn child_rendezvous() {
    let topo = Topology::from_env().unwrap();
    let expect = std::env::var(EXPECT).unwrap();
    let timeout = Duration::from_secs_f64(
        std::env::var("RECAP_TEST_TIMEOUT")
            .unwrap()
            .parse()
            .unwrap(),
    );
    let mut store = Store::start(&topo.master_addr, topo.master_port, false, timeout).unwrap();
    let started = Instant::now();
    let result = rendezvous(&mut store, topo.rank, topo.world, timeout);
    match (expect.as_str(), result) {
        ("ok", Ok(())) => {
            // Something only this rank knows, for rank 0 to read back.
            store
                .set(
                    &format!("pid/{}", topo.rank),
                    std::process::id().to_string().as_bytes(),
                )
                .unwrap();
        }
        (message, Err(e)) => {
            assert_eq!(format!("{e:#}"), message);
            assert!(started.elapsed() < timeout + Duration::from_secs(5));
        }
        (expect, Ok(())) => panic!("the rendezvous succeeded, but the test expected `{expect}`"),
    }
}

#[test]
fn rendezvous_of_several_processes() {
    let world = 4;
    let timeout = "30";
    let mut store = Store::start(LOCAL, 0, true, Duration::from_secs(30)).unwrap();
    let children: Vec<Child> = (1..world)
        .map(|r| {
            spawn_rank(
                "child_rendezvous",
                r,
                world,
                store.port(),
                &[(EXPECT, "ok"), ("RECAP_TEST_TIMEOUT", timeout)],
            )
        })
        .collect();
    rendezvous(&mut store, 0, world, Duration::from_secs(30)).unwrap();
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    for (r, pid) in (1..world).zip(pids) {
        let got = store
            .get(&format!("pid/{r}"), Duration::from_secs(30))
            .unwrap();
        assert_eq!(String::from_utf8(got).unwrap(), pid.to_string());
    }
    for (r, c) in children.into_iter().enumerate() {
        expect_success(c, &format!("rank {}", r + 1));
    }
}

#[test]
fn a_rank_that_never_arrives_is_named_within_the_timeout() {
    let world = 3;
    let mut store = Store::start(LOCAL, 0, true, Duration::from_secs(10)).unwrap();
    let message = "rank 2 of 3 did not arrive at the rendezvous within 1.5 s (did they start, with the same MASTER_ADDR and MASTER_PORT?)";
    // Rank 1 comes, rank 2 never does; both rank 0 and rank 1 must say so.
    let child = spawn_rank(
        "child_rendezvous",
        1,
        world,
        store.port(),
        &[(EXPECT, message), ("RECAP_TEST_TIMEOUT", "1.5")],
    );
    let started = Instant::now();
    let err = rendezvous(&mut store, 0, world, Duration::from_secs_f64(1.5)).unwrap_err();
    assert_eq!(format!("{err:#}"), message);
    assert!(started.elapsed() < Duration::from_secs(5));
    expect_success(child, "rank 1");
}

/// Rank `rank`'s operands: values of many magnitudes, so that sums in another order would
/// round differently, in each dtype the collective carries.
fn operands(rank: usize) -> Vec<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(rank as u64 + 11);
    let v: Vec<f32> = (0..24)
        .map(|_| {
            rng.random::<f32>()
                * 10f32.powi(rng.random_range(-6..6))
                * if rng.random() { 1.0 } else { -1.0 }
        })
        .collect();
    let t = Tensor::from_vec(v, (4, 6), &Device::Cpu).unwrap();
    [DType::F32, DType::BF16, DType::F16, DType::F64]
        .iter()
        .map(|d| t.to_dtype(*d).unwrap())
        .collect()
}

/// The exact bits of a tensor (every carried float dtype widens to f64 exactly).
fn bits(t: &Tensor) -> Vec<u64> {
    t.flatten_all()
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
        .into_iter()
        .map(f64::to_bits)
        .collect()
}

/// What one rank computes with its collective: each dtype's sum, its segment of each dtype's
/// reduce-scatter (uneven segments, rank 1's empty), a gather of uneven shards (rank r gives
/// r + 1 rows), and a sum of f64 values.
fn collect_results(c: &mut dyn Collective) -> BTreeMap<String, Vec<u64>> {
    let mut out = BTreeMap::new();
    let (rank, world) = (c.rank(), c.world());
    let n = operands(rank)[0].elem_count();
    let mut counts = vec![n / world; world];
    if world > 2 {
        counts[1] = 0;
    }
    counts[world - 1] = n - counts[..world - 1].iter().sum::<usize>();
    let start: usize = counts[..rank].iter().sum();
    for t in operands(rank) {
        let sum = c.all_reduce_sum(&t).unwrap();
        assert_eq!((sum.dtype(), sum.dims()), (t.dtype(), t.dims()));
        out.insert(format!("sum {:?}", t.dtype()), bits(&sum));
        let flat = t.flatten_all().unwrap();
        let part = c.reduce_scatter_sum(&flat, &counts).unwrap();
        // The segment is the sum's, bit for bit.
        let want = sum.flatten_all().unwrap().narrow(0, start, counts[rank]);
        assert_eq!(bits(&part), bits(&want.unwrap()), "{:?}", t.dtype());
        out.insert(format!("scatter {:?}", t.dtype()), bits(&part));
    }
    let rows = operands(rank)[0].narrow(0, 0, rank + 1).unwrap();
    out.insert("gather".into(), bits(&c.all_gather(&rows).unwrap()));
    let mut values = [0.1 * rank as f64, 1e16, -1e16 + rank as f64];
    c.all_reduce_f64(&mut values).unwrap();
    out.insert("f64".into(), values.iter().map(|v| v.to_bits()).collect());
    c.barrier().unwrap();
    out
}

/// A child's place from the launcher variables, and its TCP group.
fn join_from_env() -> (Topology, TcpGroup) {
    let topo = Topology::from_env().unwrap();
    let group = TcpGroup::connect(
        topo.rank,
        topo.world,
        &topo.master_addr,
        topo.master_port,
        timeouts(30.0),
    )
    .unwrap();
    (topo, group)
}

#[test]
#[ignore = "a rank of tcp_collective_equals_the_thread_group; started by it"]
fn child_tcp_collective() {
    let (topo, mut group) = join_from_env();
    let results = collect_results(&mut group);
    let out = Path::new(&std::env::var(OUT).unwrap()).join(format!("rank-{}.json", topo.rank));
    std::fs::write(out, serde_json::to_string(&results).unwrap()).unwrap();
}

#[test]
fn tcp_collective_equals_the_thread_group() {
    let world = 3;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let out = dir.path().to_str().unwrap();
    let children: Vec<Child> = (0..world)
        .map(|r| spawn_rank("child_tcp_collective", r, world, port, &[(OUT, out)]))
        .collect();
    // The same operations on ranks that are threads.
    let expected: Vec<_> = ThreadGroup::new(world)
        .into_iter()
        .map(|mut g| std::thread::spawn(move || collect_results(&mut g)))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().unwrap())
        .collect();
    for (r, c) in children.into_iter().enumerate() {
        expect_success(c, &format!("rank {r}"));
    }
    for (r, expected) in expected.iter().enumerate() {
        let got = std::fs::read_to_string(dir.path().join(format!("rank-{r}.json"))).unwrap();
        let got: BTreeMap<String, Vec<u64>> = serde_json::from_str(&got).unwrap();
        assert_eq!(&got, expected, "rank {r}");
    }
    // Every rank holds the same sums, and the f32 sum is rank order's: ((r0 + r1) + r2).
    let ops: Vec<Tensor> = (0..world).map(|r| operands(r)[0].clone()).collect();
    let in_order = ((&ops[0] + &ops[1]).unwrap() + &ops[2]).unwrap();
    assert_eq!(expected[0]["sum F32"], bits(&in_order));
    let shared = |e: &BTreeMap<String, Vec<u64>>| {
        e.iter()
            .filter(|(k, _)| !k.starts_with("scatter"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    assert!(expected.iter().all(|e| shared(e) == shared(&expected[0])));
    // Each rank got its own segment: rank 1's is empty, the others' are not.
    assert!(expected[1]["scatter F32"].is_empty() && !expected[2]["scatter F32"].is_empty());
}

#[test]
#[ignore = "a rank of a_dead_rank_is_named; started by it"]
fn child_dies_or_sums() {
    let (topo, mut group) = join_from_env();
    if topo.rank == 2 {
        // Dies between collectives, as a rank that failed would.
        std::process::exit(17);
    }
    let t = Tensor::ones(3, DType::F32, &Device::Cpu).unwrap();
    let started = Instant::now();
    let err = group.all_reduce_sum(&t).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    let err = format!("{err:#}");
    assert!(
        err.starts_with("rank 2 left the job during all_reduce_sum"),
        "rank {}: {err}",
        topo.rank
    );
    // The group stays failed rather than trying again out of step.
    let again = format!("{:#}", group.barrier().unwrap_err());
    assert!(
        again.starts_with("the collective group failed earlier: rank 2 left"),
        "{again}"
    );
}

#[test]
fn a_dead_rank_is_named() {
    let world = 3;
    let port = free_port();
    let children: Vec<Child> = (0..world)
        .map(|r| spawn_rank("child_dies_or_sums", r, world, port, &[]))
        .collect();
    let codes: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    assert_eq!(codes[2].status.code(), Some(17));
    for (r, out) in codes.iter().enumerate().take(2) {
        assert!(
            out.status.success(),
            "rank {r}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
