//! `warden`: the one binary for people and machines. The arguments are
//! defined in `args/`; each command group is a module under `cli/`.

mod args;
mod cli;
mod inject;
#[cfg(test)]
mod link;
mod logging;

/// jemalloc, its background threads returning freed memory to the system
/// within seconds (glibc's allocator kept 20x the idle RSS after 10,000
/// connections came and went; see the README's pressure bench).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;

use clap::Parser;

// The argument types, also at the crate root, where `cli/` imports them.
use args::{AccessCommand, BundleCommand, BundleFormat, PolicyPushArgs};
use args::{
    AdminArgs, CaCommand, CaInitArgs, Cli, Command, ControlBackupArgs, ControlCommand,
    ControlMigrateArgs, ControlRestoreArgs, ControlServeArgs, DemoArgs, EndpointsCommand,
    IdCommand, IdentitiesCommand, InitArgs, InitBackend, PolicyCheckArgs, PolicyCommand,
    PolicyEvalArgs, ProxyArgs, SvidCommand, SvidInspectArgs, SvidIssueArgs, TokenCommand,
    TokenCreateArgs,
};
use args::{InjectArgs, InjectCommand, InjectServeArgs, InstallArgs, MeshArgs};
use logging::init_logging;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_control = init_logging(&cli.log, cli.log_format, cli.audit);
    warden_proxy::tls::install_default_provider();
    let result = match cli.command {
        Command::Ca(CaCommand::Init(args)) => cli::ca::init(args),
        Command::Ca(CaCommand::Rotate { grace, admin }) => cli::control::ca_rotate(grace, &admin),
        Command::Ca(CaCommand::Status { admin }) => cli::control::ca_status(&admin),
        Command::Svid(SvidCommand::Issue(args)) => cli::svid::issue(args),
        Command::Svid(SvidCommand::Inspect(args)) => cli::svid::inspect(args),
        Command::Id(IdCommand::Check { id }) => cli::id::check(&id),
        Command::Policy(PolicyCommand::Check(args)) => cli::policy::check(args),
        Command::Policy(PolicyCommand::Eval(args)) => cli::policy::eval(*args),
        Command::Proxy(args) => cli::proxy::run(args, log_control),
        Command::Demo(args) => cli::demo::run(args),
        Command::Init(args) => cli::init::run(args),
        Command::Control(ControlCommand::Serve(args)) => cli::control::serve(args),
        Command::Control(ControlCommand::Migrate(args)) => cli::control::migrate(args),
        Command::Control(ControlCommand::Backup(args)) => cli::control::backup(args),
        Command::Control(ControlCommand::Restore(args)) => cli::control::restore(args),
        Command::Control(ControlCommand::Token(TokenCommand::Create(args))) => {
            cli::control::token_create(args)
        }
        Command::Identities(command) => cli::control::identities(command),
        Command::Endpoints(command) => cli::control::endpoints(command),
        Command::Bundle(command) => cli::control::bundle(command),
        Command::Policy(PolicyCommand::Push(args)) => cli::access::policy_push(&args),
        Command::Policy(PolicyCommand::Propose { since, out, admin }) => {
            cli::access::propose(since, out.as_deref(), &admin)
        }
        Command::Policy(PolicyCommand::Replay {
            dir,
            since,
            json,
            admin,
        }) => cli::access::replay(&dir, since, json, &admin),
        Command::Access(command) => cli::access::access(command),
        Command::Policy(PolicyCommand::Rollback { version, admin }) => {
            cli::control::policy_rollback(version, &admin)
        }
        Command::Policy(PolicyCommand::Versions { admin }) => cli::control::policy_versions(&admin),
        Command::Inject(InjectArgs {
            serve: Some(InjectCommand::Serve(args)),
            ..
        }) => cli::kube::serve(args),
        Command::Inject(args) => cli::kube::inject(args),
        Command::Install(args) => cli::kube::install(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", cli::shown_lines(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}
