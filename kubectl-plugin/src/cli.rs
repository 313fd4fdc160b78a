//! The command line: every subcommand, flag and help text of `kubectl kadalu`.
//!
//! Flag spellings follow Kadalu's own `kubectl-kadalu` (`--type`, `--device node:/dev/x`,
//! `--path node:/dir`, `--pvc name`, `--pv-reclaim-policy`, `--dry-run`, `--name`,
//! `--detail`, `--status`) so that its documentation and people's habits still apply.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::exit::EXIT_CODES_HELP;
use crate::validate::EntryKind;

/// Parses a command line like clap does, and also records the typed order of storage-add's
/// `--device`/`--path`/`--pvc` entries, which separate lists would lose.
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().try_get_matches_from(args)?;
    let mut cli = Cli::from_arg_matches(&matches)?;
    if let (Command::StorageAdd(a), Some(("storage-add", sub))) =
        (&mut cli.command, matches.subcommand())
    {
        let mut typed: Vec<(usize, EntryKind, String)> = Vec::new();
        for (id, kind) in [
            ("device", EntryKind::Device),
            ("path", EntryKind::Path),
            ("pvc", EntryKind::Pvc),
        ] {
            if let (Some(idx), Some(vals)) = (sub.indices_of(id), sub.get_many::<String>(id)) {
                typed.extend(idx.zip(vals).map(|(i, v)| (i, kind, v.clone())));
            }
        }
        typed.sort_by_key(|(i, _, _)| *i);
        a.order = Some(typed.into_iter().map(|(_, k, v)| (k, v)).collect());
    }
    Ok(cli)
}

/// Manage kadalu storage pools through the Kubernetes API.
#[derive(Debug, Parser)]
#[command(
    name = "kubectl-kadalu",
    bin_name = "kubectl-kadalu",
    version,
    about = "Manage kadalu storage pools (run as `kubectl kadalu ...`)",
    after_help = EXIT_CODES_HELP,
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand accepts: where the cluster is and how to print.
#[derive(Debug, Clone, Args)]
pub struct GlobalOpts {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use (default: the current context).
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Namespace kadalu runs in.
    #[arg(
        short = 'n',
        long,
        global = true,
        default_value = "kadalu",
        value_name = "NS"
    )]
    pub namespace: String,
    /// Output format: a human table, or json/yaml for scripts.
    #[arg(
        short = 'o',
        long,
        global = true,
        value_enum,
        default_value_t = Output::Table
    )]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a storage pool (a KadaluStorage object).
    #[command(after_help = STORAGE_ADD_EXAMPLES)]
    StorageAdd(StorageAddArgs),
    /// List storage pools with their health, capacity and PVs.
    #[command(after_help = STORAGE_LIST_EXAMPLES)]
    StorageList(StorageListArgs),
    /// Remove a storage pool; refused while it still holds PVs.
    #[command(after_help = STORAGE_REMOVE_EXAMPLES)]
    StorageRemove(StorageRemoveArgs),
    /// Show the heal backlog of every brick.
    #[command(after_help = HEALINFO_EXAMPLES)]
    Healinfo(HealinfoArgs),
    /// Set pool options (KEY VALUE pairs in spec.options).
    #[command(after_help = OPTION_SET_EXAMPLES)]
    OptionSet(OptionSetArgs),
    /// Reset pool options to their defaults (remove them from spec.options).
    #[command(after_help = OPTION_RESET_EXAMPLES)]
    OptionReset(OptionResetArgs),
    /// Show the plugin version and the versions running in the cluster.
    Version,
    /// Install (or upgrade to) this version's operator manifest by server-side apply.
    #[command(after_help = INSTALL_EXAMPLES)]
    Install(InstallArgs),
    /// Print logs of the operator, CSI and server pods.
    #[command(after_help = LOGS_EXAMPLES)]
    Logs(LogsArgs),
    /// Print a shell completion script.
    #[command(after_help = COMPLETION_EXAMPLES)]
    Completion(CompletionArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PoolType {
    #[value(name = "Replica1")]
    Replica1,
    #[value(name = "Replica3")]
    Replica3,
}

impl PoolType {
    /// The spelling used in the CRD and by Kadalu.
    pub fn as_str(self) -> &'static str {
        match self {
            PoolType::Replica1 => "Replica1",
            PoolType::Replica3 => "Replica3",
        }
    }

    /// Bricks per replica set.
    pub fn set_size(self) -> usize {
        match self {
            PoolType::Replica1 => 1,
            PoolType::Replica3 => 3,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReclaimPolicy {
    #[value(name = "delete")]
    Delete,
    #[value(name = "archive")]
    Archive,
    #[value(name = "retain")]
    Retain,
}

impl ReclaimPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            ReclaimPolicy::Delete => "delete",
            ReclaimPolicy::Archive => "archive",
            ReclaimPolicy::Retain => "retain",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct StorageAddArgs {
    /// Name of the pool; its StorageClass is `kadalu.NAME`.
    pub name: String,
    /// Pool type: Replica1 (one brick per set) or Replica3 (three per set).
    #[arg(long = "type", value_enum, ignore_case = true)]
    pub pool_type: PoolType,
    /// A raw device on a node, formatted if it holds no filesystem (repeatable).
    #[arg(long, value_name = "NODE:DEVICE")]
    pub device: Vec<String>,
    /// A directory on a node (repeatable).
    #[arg(long, value_name = "NODE:DIR")]
    pub path: Vec<String>,
    /// An existing PVC in the kadalu namespace (repeatable).
    #[arg(long, value_name = "PVC")]
    pub pvc: Vec<String>,
    /// What happens to a PV's data when its PVC is deleted.
    #[arg(long, value_enum, default_value_t = ReclaimPolicy::Delete)]
    pub pv_reclaim_policy: ReclaimPolicy,
    /// Print the object that would be created (YAML, or JSON with -o json) and send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The entries in the order they were typed (filled by [`parse`]): for Replica3 each
    /// three consecutive entries form one replica set, whatever their flags.
    #[arg(skip)]
    pub order: Option<Vec<(EntryKind, String)>>,
}

#[derive(Debug, Clone, Args)]
pub struct StorageListArgs {
    /// Show only this pool.
    #[arg(long)]
    pub name: Option<String>,
    /// One row per brick and per PV as well.
    #[arg(long)]
    pub detail: bool,
    /// Add the status conditions (Ready/Progressing/Degraded) and their messages.
    #[arg(long)]
    pub status: bool,
}

#[derive(Debug, Clone, Args)]
pub struct StorageRemoveArgs {
    /// Name of the pool to remove.
    pub name: String,
}

#[derive(Debug, Clone, Args)]
pub struct HealinfoArgs {
    /// Show only this pool.
    #[arg(long)]
    pub name: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct OptionSetArgs {
    /// Name of the pool.
    pub name: String,
    /// KEY VALUE pairs.
    #[arg(value_name = "KEY VALUE", num_args = 2.., required = true)]
    pub pairs: Vec<String>,
}

#[derive(Debug, Clone, Args)]
pub struct OptionResetArgs {
    /// Name of the pool.
    pub name: String,
    /// Keys to reset.
    #[arg(value_name = "KEY", required_unless_present = "all")]
    pub keys: Vec<String>,
    /// Reset every option.
    #[arg(long, conflicts_with = "keys")]
    pub all: bool,
}

#[derive(Debug, Clone, Args)]
pub struct InstallArgs {
    /// Apply this manifest instead of the one built into the plugin.
    #[arg(long, value_name = "FILE")]
    pub manifest: Option<PathBuf>,
    /// Print the objects that would be applied and send nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Args)]
pub struct LogsArgs {
    /// Only this pod (default: every pod in the namespace).
    #[arg(long)]
    pub pod: Option<String>,
    /// Only this container (default: every container of each pod).
    #[arg(long, short = 'c')]
    pub container: Option<String>,
    /// Lines from the end of each log.
    #[arg(long, value_name = "LINES")]
    pub tail: Option<i64>,
}

#[derive(Debug, Clone, Args)]
pub struct CompletionArgs {
    /// The shell to print a completion script for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

const STORAGE_ADD_EXAMPLES: &str = "\
Examples:
  kubectl kadalu storage-add pool1 --type Replica3 \\
      --device node1:/dev/vdc --device node2:/dev/vdc --device node3:/dev/vdc
  kubectl kadalu storage-add pool2 --type Replica1 --path node1:/exports/pool2
  kubectl kadalu storage-add pool3 --type Replica1 --pvc local-pvc-1 --pv-reclaim-policy retain
  kubectl kadalu storage-add pool1 --type Replica3 --device n1:/dev/vdc \\
      --device n2:/dev/vdc --device n3:/dev/vdc --dry-run     # print the YAML only

Replica1 takes any number of entries (one brick per set); Replica3 a multiple of 3
(each three consecutive entries form one replica set, best on three different nodes).";

const STORAGE_LIST_EXAMPLES: &str = "\
Examples:
  kubectl kadalu storage-list
  kubectl kadalu storage-list --name pool1 --detail
  kubectl kadalu storage-list --status -o json";

const STORAGE_REMOVE_EXAMPLES: &str = "\
Examples:
  kubectl kadalu storage-remove pool1

Refused (exit code 3) while PersistentVolumes of StorageClass kadalu.NAME exist; the
message names them. Delete their PVCs first.";

const HEALINFO_EXAMPLES: &str = "\
Examples:
  kubectl kadalu healinfo
  kubectl kadalu healinfo --name pool1 -o yaml";

const OPTION_SET_EXAMPLES: &str = "\
Examples:
  kubectl kadalu option-set pool1 performance.quick-read off
  kubectl kadalu option-set pool1 key1 value1 key2 value2";

const OPTION_RESET_EXAMPLES: &str = "\
Examples:
  kubectl kadalu option-reset pool1 performance.quick-read
  kubectl kadalu option-reset pool1 --all";

const INSTALL_EXAMPLES: &str = "\
Examples:
  kubectl kadalu install
  kubectl kadalu install --dry-run
  kubectl kadalu install --manifest ./operator.yaml";

const LOGS_EXAMPLES: &str = "\
Examples:
  kubectl kadalu logs
  kubectl kadalu logs --pod kadalu-operator-6d8f7c9b5-x2x7z --tail 100
  kubectl kadalu logs --pod kadalu-csi-nodeplugin-abcde --container kadalu-csi";

const COMPLETION_EXAMPLES: &str = "\
Examples:
  kubectl-kadalu completion bash > /etc/bash_completion.d/kubectl-kadalu
  kubectl-kadalu completion zsh > \"${fpath[1]}/_kubectl-kadalu\"
  kubectl-kadalu completion fish > ~/.config/fish/completions/kubectl-kadalu.fish";

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        super::parse(std::iter::once("kubectl-kadalu").chain(args.iter().copied()))
    }

    #[test]
    fn storage_add_keeps_the_typed_order_across_flags() {
        let cli = parse(&[
            "storage-add",
            "p",
            "--type",
            "Replica3",
            "--path",
            "n1:/a",
            "--device",
            "n2:/dev/b",
            "--pvc",
            "c",
            "--path",
            "n4:/d",
        ])
        .unwrap();
        let Command::StorageAdd(a) = cli.command else {
            panic!("wrong subcommand")
        };
        let order = a.order.expect("parse records the order");
        assert_eq!(
            order,
            [
                (EntryKind::Path, "n1:/a".to_string()),
                (EntryKind::Device, "n2:/dev/b".to_string()),
                (EntryKind::Pvc, "c".to_string()),
                (EntryKind::Path, "n4:/d".to_string()),
            ]
        );
    }

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn storage_add_parses_kadalu_flags() {
        let cli = parse(&[
            "storage-add",
            "pool1",
            "--type",
            "Replica3",
            "--device",
            "n1:/dev/vdc",
            "--device",
            "n2:/dev/vdc",
            "--path",
            "n3:/exports/a",
            "--pv-reclaim-policy",
            "retain",
            "--dry-run",
        ])
        .expect("valid command line");
        assert_eq!(cli.global.namespace, "kadalu");
        assert_eq!(cli.global.output, Output::Table);
        let Command::StorageAdd(a) = cli.command else {
            panic!("wrong subcommand: {:?}", cli.command)
        };
        assert_eq!(a.name, "pool1");
        assert_eq!(a.pool_type, PoolType::Replica3);
        assert_eq!(a.device, ["n1:/dev/vdc", "n2:/dev/vdc"]);
        assert_eq!(a.path, ["n3:/exports/a"]);
        assert!(a.pvc.is_empty());
        assert_eq!(a.pv_reclaim_policy, ReclaimPolicy::Retain);
        assert!(a.dry_run);
    }

    #[test]
    fn storage_add_type_is_required_and_checked() {
        let e = parse(&["storage-add", "p", "--device", "n:/dev/x"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::MissingRequiredArgument);
        let e = parse(&["storage-add", "p", "--type", "Replica2"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue);
        // Kadalu users type it in any case.
        let cli = parse(&["storage-add", "p", "--type", "replica1", "--pvc", "x"]).unwrap();
        let Command::StorageAdd(a) = cli.command else {
            panic!("wrong subcommand")
        };
        assert_eq!(a.pool_type, PoolType::Replica1);
        assert_eq!(a.pv_reclaim_policy, ReclaimPolicy::Delete);
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = parse(&[
            "storage-list",
            "--name",
            "p1",
            "--detail",
            "-o",
            "json",
            "-n",
            "storage",
            "--context",
            "edge",
            "--kubeconfig",
            "/tmp/kc",
        ])
        .unwrap();
        assert_eq!(cli.global.output, Output::Json);
        assert_eq!(cli.global.namespace, "storage");
        assert_eq!(cli.global.context.as_deref(), Some("edge"));
        assert_eq!(cli.global.kubeconfig, Some(PathBuf::from("/tmp/kc")));
        let Command::StorageList(a) = cli.command else {
            panic!("wrong subcommand")
        };
        assert_eq!(a.name.as_deref(), Some("p1"));
        assert!(a.detail);
        assert!(!a.status);
    }

    #[test]
    fn option_set_needs_pairs_and_option_reset_needs_keys_or_all() {
        let cli = parse(&["option-set", "p", "k1", "v1", "k2", "v2"]).unwrap();
        let Command::OptionSet(a) = cli.command else {
            panic!("wrong subcommand")
        };
        assert_eq!(a.pairs, ["k1", "v1", "k2", "v2"]);
        assert!(parse(&["option-set", "p", "k1"]).is_err());
        assert!(parse(&["option-reset", "p"]).is_err());
        assert!(parse(&["option-reset", "p", "k", "--all"]).is_err());
        let cli = parse(&["option-reset", "p", "--all"]).unwrap();
        let Command::OptionReset(a) = cli.command else {
            panic!("wrong subcommand")
        };
        assert!(a.all && a.keys.is_empty());
    }

    #[test]
    fn logs_install_completion_parse() {
        let cli = parse(&["logs", "--pod", "op", "-c", "main", "--tail", "20"]).unwrap();
        let Command::Logs(a) = cli.command else {
            panic!("wrong subcommand")
        };
        assert_eq!(
            (a.pod.as_deref(), a.container.as_deref(), a.tail),
            (Some("op"), Some("main"), Some(20))
        );
        let cli = parse(&["install", "--manifest", "m.yaml", "--dry-run"]).unwrap();
        let Command::Install(a) = cli.command else {
            panic!("wrong subcommand")
        };
        assert!(a.dry_run);
        assert_eq!(a.manifest, Some(PathBuf::from("m.yaml")));
        for sh in ["bash", "zsh", "fish"] {
            assert!(parse(&["completion", sh]).is_ok(), "{sh}");
        }
        assert!(parse(&["completion", "cmd.exe"]).is_err());
    }

    #[test]
    fn help_shows_examples_and_exit_codes() {
        let mut cmd = Cli::command();
        let top = cmd.render_long_help().to_string();
        assert!(top.contains("Exit codes"), "{top}");
        let add = cmd
            .find_subcommand_mut("storage-add")
            .expect("storage-add exists")
            .render_long_help()
            .to_string();
        assert!(add.contains("kubectl kadalu storage-add pool1 --type Replica3"));
    }
}
