//! bench-cost's lower bound (`--sensors-only`): the agent built with its `sensors-only`
//! feature loads every kernel program and decodes every record from the ring, then discards
//! it; no process tree, no detector, no store. The same storms measured on it say what the
//! kernel programs and the ring reader cost alone: no work the pipeline saves can bring the
//! all-in figure below it. A target below it asks for fewer or cheaper kernel records, not a
//! faster pipeline.

use super::*;

/// The sensors-only build: `binary`, or `TARGET/sensors-only/release/sentinel` (built first
/// unless `no_build`, in a target directory of its own so that the agent's release build is
/// left as it is).
pub(super) fn sensors_only_binary(
    no_build: bool,
    binary: Option<&Path>,
) -> anyhow::Result<PathBuf> {
    if let Some(binary) = binary {
        ensure!(
            binary.is_file(),
            "no sensors-only build at {}",
            binary.display()
        );
        return Ok(binary.to_owned());
    }
    let root = workspace_root();
    let target = default_binary(&root)
        .parent()
        .and_then(Path::parent)
        .expect("TARGET/release/sentinel")
        .join("sensors-only");
    if !no_build {
        eprintln!(
            "building the sensors-only agent… (cargo build --release -p sentinel-agent \
             --features sensors-only --target-dir {})",
            target.display()
        );
        let status = Command::new("cargo")
            .args(["build", "--release", "-p", "sentinel-agent"])
            .args(["--features", "sensors-only", "--target-dir"])
            .arg(&target)
            .current_dir(&root)
            .status()
            .context("running cargo")?;
        ensure!(
            status.success(),
            "building the sensors-only agent failed ({status})"
        );
    }
    let binary = target.join("release").join("sentinel");
    ensure!(
        binary.is_file(),
        "no sensors-only build at {} (run without --no-build, or pass --sensors-only-binary)",
        binary.display()
    );
    Ok(binary)
}

/// The exec, connect and DNS storms on the sensors-only build (`bench.binary`).
pub(super) fn measure_sensors_only(
    bench: &Bench,
    args: &Args,
    label: &str,
) -> anyhow::Result<Costs> {
    let mut agent = Agent::start(bench, "sensors-only")?;
    agent.wait_ready()?;
    thread::sleep(Duration::from_secs(2));
    let exec = charged_exec_storm(&mut agent, args.execs, label, "exec storm")?;
    let connect = charged_connect_storm(&mut agent, args.connects, label)?;
    let dns = charged_dns_storm(&mut agent, args.dns_answers, label)?;
    agent.stop()?;
    Ok(Costs {
        exec,
        connect,
        dns,
        ..Costs::default()
    })
}

/// Which storm of a round's costs.
type Pick = fn(&Costs) -> &Charge;

/// The sensors-only medians beside the full agent's, and what they leave of each target.
pub(super) fn print_sensors_only(sensors: &[Costs], sentinel: &[Costs], args: &Args) {
    if sensors.is_empty() {
        return;
    }
    println!(
        "  the sensors alone (the sensors-only build: every kernel program, every record read \
         from the ring and discarded; {} round(s)):",
        sensors.len()
    );
    let storms: [(&str, Pick, u64, Option<f64>); 3] = [
        (
            "per exec      ",
            |c| &c.exec,
            args.execs,
            Some(EXEC_TARGET_US),
        ),
        (
            "per connect   ",
            |c| &c.connect,
            args.connects,
            Some(CONNECT_TARGET_US),
        ),
        ("per DNS answer", |c| &c.dns, args.dns_answers, None),
    ];
    for (name, pick, n, target) in storms {
        let alone = per_event_us(sensors, pick, n);
        let bpf = median(
            &sensors
                .iter()
                .map(|c| pick(c).bpf_ns() as f64 / n as f64 / 1e3)
                .collect::<Vec<_>>(),
        );
        let pipeline = per_event_us(sentinel, pick, n) - alone;
        let against = match target {
            Some(t) if alone > t => {
                format!("; the target ({t} µs) is below the sensors alone")
            }
            Some(t) => format!(
                "; {:.2} µs of the target ({t} µs) left for the pipeline",
                t - alone
            ),
            None => String::new(),
        };
        println!(
            "    {name} {alone:.2} µs (BPF {bpf:.2} + reader {:.2}); the pipeline adds \
             {pipeline:.2} µs{against}",
            alone - bpf
        );
    }
}
