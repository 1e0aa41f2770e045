//! `ringworker-loadgen`: the bundled manager and load generator.

use clap::Parser;

/// A manager that drives ringworker agents with a workload, verifies every
/// result and reports throughput, latency and byte accounting.
#[derive(Debug, Parser)]
#[command(name = "ringworker-loadgen", version, about)]
struct Args {
    /// Endpoint to listen on: tcp://HOST:PORT (port 0 picks one) or unix:///path
    #[arg(long, value_name = "ENDPOINT")]
    listen: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let endpoint: ringworker::transport::Endpoint = args.listen.parse()?;
    anyhow::bail!(
        "ringworker-loadgen: workloads are not implemented yet (listen endpoint {endpoint} parsed)"
    );
}
