//! The `churn` binary: parses the command line, sets up logging, binds the
//! listener and hands over to `churn_runtime`.

use std::path::PathBuf;

use anyhow::Context;
use churn_runtime::{Config, ConfigFile};
use clap::{Args, Parser, Subcommand};

/// Many threads allocate per request; glibc's malloc serialises them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "churn",
    version,
    about = "Runs TypeScript functions in V8 isolates"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the host.
    Serve(Common),
    /// Manage service keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a new service key and print it once.
    Create(Common),
}

#[derive(Args)]
struct Common {
    /// Config file (default: ./churn.toml if it exists).
    #[arg(long, env = "CHURN_CONFIG")]
    config: Option<PathBuf>,
    /// Address to listen on (default 127.0.0.1:8787).
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    /// Where apps' data lives (default ./churn-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// Defaults, then the file, then `CHURN_*` variables, then flags.
fn load_config(common: &Common) -> anyhow::Result<Config> {
    let mut config = Config::default();
    let file = match &common.config {
        Some(path) => Some(path.clone()),
        None => Some(PathBuf::from("churn.toml")).filter(|p| p.exists()),
    };
    if let Some(path) = file {
        config = config.merge(ConfigFile::read(&path)?);
    }
    config = config.merge(ConfigFile::from_env(|k| std::env::var(k).ok())?);
    config = config.merge(ConfigFile {
        listen: common.listen,
        data_dir: common.data_dir.clone(),
        ..ConfigFile::default()
    });
    Ok(config)
}

async fn serve(common: Common) -> anyhow::Result<()> {
    let config = load_config(&common)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let bound = listener.local_addr()?;
    let data_dir = config.data_dir.clone();
    let (host, first_key) = churn_runtime::open_host(config, bound)
        .with_context(|| format!("cannot open data directory {}", data_dir.display()))?;
    if let Some(key) = first_key {
        println!("created the first service key (shown once, store it now): {key}");
    }
    println!("data in {}", data_dir.display());
    println!("listening on http://{bound}");
    let shutdown = async {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!("shutting down");
    };
    churn_runtime::serve(host, listener, shutdown).await?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CHURN_LOG")
                .unwrap_or_else(|_| "churn=info,warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Serve(common) => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(serve(common)),
        Command::Keys {
            command: KeysCommand::Create(common),
        } => {
            let config = load_config(&common)?;
            let key = churn_runtime::service_keys(&config)?.create()?;
            println!("{key}");
            Ok(())
        }
    }
}
