//! Cluster management on etcd: `anyedge apps put FILE`, `apps rm NAME`, `apps list`,
//! `instances list`. Each connects with `--etcd URL[,URL...]`, prints what it did on stdout and
//! problems on stderr, and exits 1 on any problem (0 otherwise). Reads are paged and puts are
//! split into transactions within etcd's limits (`anyedge_store::pages`), so neither has a
//! ceiling on the number of apps.

use crate::cli::{AppsArgs, AppsCommand, EtcdArgs, InstancesArgs, InstancesCommand};
use anyedge_config::App;
use anyedge_store::pages::{self, ListError, PutError};
use anyedge_store::state::claims::Claims;
use anyedge_store::values::{decode_app, encode_app};
use anyedge_store::{client, CatalogState, Change, Key, Keys};
use etcd_client::{Client, KvClient};
use std::collections::BTreeMap;
use std::process::ExitCode;

pub fn apps(args: &AppsArgs) -> ExitCode {
    match &args.command {
        AppsCommand::Put { file, etcd } => run(etcd, |c| put(c, file)),
        AppsCommand::Rm { name, etcd } => run(etcd, |c| rm(c, name)),
        AppsCommand::List { etcd } => run(etcd, list_apps),
    }
}

pub fn instances(args: &InstancesArgs) -> ExitCode {
    match &args.command {
        InstancesCommand::List { etcd } => run(etcd, list_instances),
    }
}

/// Connect and run one command on a small runtime; an error is printed and exits 1.
pub(crate) fn run<F, Fut>(etcd: &EtcdArgs, command: F) -> ExitCode
where
    F: FnOnce(Client) -> Fut,
    Fut: std::future::Future<Output = Result<(), CmdError>>,
{
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let cfg = etcd.config();
    let result = runtime.block_on(async {
        let client = client::connect(&cfg)
            .await
            .map_err(|e| CmdError::Other(e.to_string()))?;
        command(client).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CmdError::Etcd(e)) => {
            eprintln!("etcd at {}: {e}", etcd.etcd);
            ExitCode::FAILURE
        }
        Err(CmdError::List(e)) => {
            eprintln!("etcd at {}: {e}", etcd.etcd);
            ExitCode::FAILURE
        }
        Err(CmdError::Other(e)) => {
            eprintln!("{}", e.trim_end());
            ExitCode::FAILURE
        }
    }
}

/// A command's failure: etcd's (printed with the endpoints), or a message of its own.
pub(crate) enum CmdError {
    Etcd(etcd_client::Error),
    List(ListError),
    Other(String),
}

impl From<ListError> for CmdError {
    fn from(e: ListError) -> Self {
        CmdError::List(e)
    }
}

impl From<String> for CmdError {
    fn from(s: String) -> Self {
        CmdError::Other(s)
    }
}

fn etcd_err(e: etcd_client::Error) -> CmdError {
    CmdError::Etcd(e)
}

/// Validate the file with the config rules (no instances), check it against the apps already
/// in etcd (hostnames, ports), then put every app, in transactions within etcd's limits.
async fn put(mut client: Client, file: &std::path::Path) -> Result<(), CmdError> {
    // Certificate paths are kept absolute: etcd has no "file's directory".
    let path = std::fs::canonicalize(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
    let apps = anyedge_config::parse_apps(&text, &file.display().to_string(), path.parent())
        .map_err(|d| format!("{d}{} problem(s) found", d.0.len()))?;
    if apps.is_empty() {
        return Err(format!("{}: no [[apps]] in the file", file.display()).into());
    }
    put_apps(&mut client, &apps, |app| println!("put app {}", app.name)).await
}

/// Check `apps` against the apps already in etcd (hostnames, ports: one paged read), then put
/// them in order, in as few transactions as etcd's limits allow (one for up to 128 small apps:
/// all or none). Each app is put only if it did not change since the read. `written` is called
/// for each app once its transaction is in; a failure says how many were.
async fn put_apps(
    client: &mut Client,
    apps: &[App],
    mut written: impl FnMut(&App),
) -> Result<(), CmdError> {
    let keys = Keys::default();
    let mut kv = client::kv(client);
    let (revision, existing) = read_apps(&mut kv, &keys).await?;
    check_claims(&existing, apps)?;
    let puts: Vec<(String, Vec<u8>)> = apps
        .iter()
        .map(|a| (keys.key(&Key::App(a.name.clone())), encode_app(a)))
        .collect();
    pages::put_all(&mut kv, &puts, revision, |range| {
        apps.get(range).into_iter().flatten().for_each(&mut written);
    })
    .await
    .map_err(|e| stopped(e, apps.len()))
}

/// Every app of `apps` with the apps in etcd (replaced by `apps` where names match) claims
/// hostnames and listeners without a clash.
fn check_claims(existing: &[App], apps: &[App]) -> Result<(), CmdError> {
    let mut claims = Claims::default();
    let mut all: BTreeMap<&str, (&App, bool)> = existing
        .iter()
        .map(|a| (a.name.as_str(), (a, false)))
        .collect();
    for app in apps {
        all.insert(&app.name, (app, true));
    }
    for (app, new) in all.values() {
        if let Err(why) = claims.claim(app) {
            let whose = if *new { "" } else { " (already in etcd)" };
            return Err(format!("app `{}`{whose}: {why}", app.name).into());
        }
    }
    Ok(())
}

/// A put that stopped: nothing written is etcd's error as it is; a partial write says how far
/// it got (the apps printed so far are in etcd).
fn stopped(e: PutError, total: usize) -> CmdError {
    match e {
        PutError::Etcd {
            written: 0,
            source,
        } => CmdError::Etcd(source),
        e => CmdError::Other(format!(
            "{} of {total} apps written (those printed), the rest not: {e}\nputting the same file again is safe",
            e.written()
        )),
    }
}

/// For `anyedge demo --etcd`: put the apps of an apps file's text.
pub(crate) async fn put_apps_text(endpoints: &str, text: &str) -> Result<(), String> {
    let apps = anyedge_config::parse_apps(text, "<demo apps>", None).map_err(|d| d.to_string())?;
    let mut client = client::connect(&client::plain(endpoints))
        .await
        .map_err(|e| e.to_string())?;
    match put_apps(&mut client, &apps, |_| {}).await {
        Ok(()) => Ok(()),
        Err(CmdError::Etcd(e)) => Err(format!("etcd at {endpoints}: {e}")),
        Err(CmdError::List(e)) => Err(format!("etcd at {endpoints}: {e}")),
        Err(CmdError::Other(e)) => Err(e),
    }
}

/// The apps in etcd (page by page) and the revision they were read at.
async fn read_apps(kv: &mut KvClient, keys: &Keys) -> Result<(i64, Vec<App>), CmdError> {
    let listing = pages::list(kv, &keys.apps(), 0).await?;
    let mut apps = Vec::new();
    for kv in &listing.kvs {
        let Some(Key::App(name)) = keys.parse(kv.key()) else {
            continue;
        };
        match decode_app(kv.value(), &name) {
            Ok((app, _)) => apps.push(app),
            Err(e) => eprintln!("warning: apps/{name} skipped: {e}"),
        }
    }
    Ok((listing.revision, apps))
}

async fn rm(mut client: Client, name: &str) -> Result<(), CmdError> {
    let key = Keys::default().key(&Key::App(name.to_string()));
    let resp = client.delete(key, None).await.map_err(etcd_err)?;
    if resp.deleted() == 0 {
        return Err(format!("no app `{name}` in etcd").into());
    }
    println!("removed app {name}");
    Ok(())
}

/// Everything under the prefix (page by page, at one revision), as the nodes see it.
async fn catalog(client: &mut Client) -> Result<CatalogState, CmdError> {
    let keys = Keys::default();
    let listing = pages::list(&mut client::kv(client), &keys.all(), 0).await?;
    let mut state = CatalogState::new(keys);
    for kv in &listing.kvs {
        state.apply(Change::Put {
            key: kv.key().to_vec(),
            value: kv.value().to_vec(),
        });
    }
    Ok(state)
}

async fn list_apps(mut client: Client) -> Result<(), CmdError> {
    let state = catalog(&mut client).await?;
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (app, _) in state.instances() {
        *counts.entry(app).or_default() += 1;
    }
    println!("NAME\tHOSTNAMES\tPORTS\tINSTANCES");
    for app in state.apps() {
        let ports: Vec<String> = app
            .services
            .iter()
            .flat_map(|s| &s.ports)
            .map(|p| match p.bind {
                Some(ip) => format!("{ip}:{}", p.port),
                None => p.port.to_string(),
            })
            .collect();
        println!(
            "{}\t{}\t{}\t{}",
            app.name,
            dash(app.hostnames.join(",")),
            dash(ports.join(",")),
            counts.get(app.name.as_str()).copied().unwrap_or(0)
        );
    }
    Ok(())
}

async fn list_instances(mut client: Client) -> Result<(), CmdError> {
    let state = catalog(&mut client).await?;
    println!("APP\tID\tREGION\tADDRESS\tNODE");
    for (app, r) in state.instances() {
        println!(
            "{app}\t{}\t{}\t{}\t{}",
            r.instance.id, r.instance.region, r.instance.address, r.node
        );
    }
    Ok(())
}

fn dash(s: String) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s
    }
}
