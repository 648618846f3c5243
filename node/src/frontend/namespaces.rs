//! Namespace RPCs over the registry in the system shard.

use std::collections::BTreeMap;

use norn_proto::protos::temporal::api::enums::v1::{ArchivalState, NamespaceState};
use norn_proto::protos::temporal::api::namespace::v1::{NamespaceConfig, NamespaceInfo};
use norn_proto::protos::temporal::api::replication::v1::NamespaceReplicationConfig;
use norn_proto::protos::temporal::api::workflowservice::v1::*;
use tonic::Status;

use crate::command::{ShardCommand, ShardResult};
use crate::namespace::{self, NamespaceCommand, NamespaceRecord, NamespaceResult, SYSTEM_SHARD};
use crate::routing::Router;

/// Page size when the request gives none.
const PAGE_SIZE_DEFAULT: usize = 100;

/// Shortest retention accepted.
const RETENTION_MS_MIN: u64 = 1_000;
/// Longest retention accepted (100 years).
const RETENTION_MS_MAX: u64 = 100 * 365 * 86_400_000;

/// A retention period as given (none: keep the default or the current one). Zero, negative,
/// malformed and absurd periods are refused: a retention that wrapped around would delete every
/// closed run at once.
fn duration_ms(d: &Option<prost_wkt_types::Duration>) -> Result<Option<u64>, Status> {
    let Some(d) = d else { return Ok(None) };
    if d.seconds < 0 || d.nanos < 0 || d.nanos >= 1_000_000_000 {
        return Err(Status::invalid_argument("retention must be a positive, well-formed duration"));
    }
    let ms = u64::try_from(d.seconds)
        .ok()
        .and_then(|s| s.checked_mul(1000))
        .and_then(|ms| ms.checked_add(u64::try_from(d.nanos).unwrap_or(0) / 1_000_000))
        .filter(|ms| (RETENTION_MS_MIN..=RETENTION_MS_MAX).contains(ms));
    ms.map(Some).ok_or_else(|| {
        Status::invalid_argument(format!(
            "retention must be between {} s and {} days",
            RETENTION_MS_MIN / 1000,
            RETENTION_MS_MAX / 86_400_000
        ))
    })
}

fn to_duration(ms: u64) -> prost_wkt_types::Duration {
    prost_wkt_types::Duration { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

/// The Temporal shape of a namespace.
pub fn describe_response(rec: &NamespaceRecord) -> DescribeNamespaceResponse {
    DescribeNamespaceResponse {
        namespace_info: Some(NamespaceInfo {
            name: rec.name.clone(),
            state: NamespaceState::Registered as i32,
            description: rec.description.clone(),
            owner_email: rec.owner_email.clone(),
            // The namespace's own entries, and every limit in effect (`norn.limits.*`).
            data: rec.data.clone().into_iter().chain(crate::limits::Limits::of(&rec.data).entries()).collect(),
            id: rec.id.clone(),
            ..Default::default()
        }),
        config: Some(NamespaceConfig {
            workflow_execution_retention_ttl: Some(to_duration(rec.retention_ms)),
            history_archival_state: ArchivalState::Disabled as i32,
            visibility_archival_state: ArchivalState::Disabled as i32,
            ..Default::default()
        }),
        replication_config: Some(NamespaceReplicationConfig {
            active_cluster_name: "active".into(),
            ..Default::default()
        }),
        failover_version: 0,
        is_global_namespace: false,
        ..Default::default()
    }
}

fn result(r: ShardResult) -> Result<NamespaceRecord, Status> {
    match r {
        ShardResult::Namespace(NamespaceResult::Ok(rec)) => Ok(rec),
        ShardResult::Namespace(NamespaceResult::AlreadyExists(n)) => {
            Err(Status::already_exists(format!("namespace {n} already exists")))
        }
        ShardResult::Namespace(NamespaceResult::NotFound(n)) => {
            Err(Status::not_found(format!("namespace {n} not found")))
        }
        ShardResult::Namespace(NamespaceResult::Invalid(e)) => Err(Status::invalid_argument(e)),
        other => Err(Status::internal(format!("namespace registry: {other:?}"))),
    }
}

/// Looks a namespace up by name (linearizable).
pub async fn lookup(admin: &Router, name: &str) -> Result<NamespaceRecord, Status> {
    let key = format!("ns/name/{name}").into_bytes();
    let v = admin
        .read_key(SYSTEM_SHARD, &key)
        .await?
        .ok_or_else(|| Status::not_found(format!("namespace {name} not found")))?;
    postcard::from_bytes(&v).map_err(|e| Status::internal(format!("corrupt namespace record {name}: {e}")))
}

/// Makes sure `default` exists (idempotent; every node runs it at start).
pub async fn ensure_default(admin: &Router) -> Result<NamespaceRecord, Status> {
    let cmd = NamespaceCommand::Ensure {
        id: namespace::derived_id(namespace::DEFAULT_NAMESPACE),
        name: namespace::DEFAULT_NAMESPACE.into(),
    };
    result(admin.propose_command(SYSTEM_SHARD, &ShardCommand::Namespace(cmd)).await?)
}

pub(super) async fn register(admin: &Router, r: RegisterNamespaceRequest) -> Result<RegisterNamespaceResponse, Status> {
    namespace::validate_name(&r.namespace).map_err(Status::invalid_argument)?;
    if r.is_global_namespace {
        return Err(Status::invalid_argument("global (multi-cluster) namespaces are not supported by Norn"));
    }
    let retention_ms = duration_ms(&r.workflow_execution_retention_period)?.unwrap_or(0);
    crate::limits::Limits::validate(&r.data.iter().map(|(k, v)| (k.clone(), v.clone())).collect())?;
    let cmd = NamespaceCommand::Register {
        id: new_id(),
        name: r.namespace,
        description: r.description,
        owner_email: r.owner_email,
        retention_ms,
        data: r.data.into_iter().collect(),
    };
    result(admin.propose_command(SYSTEM_SHARD, &ShardCommand::Namespace(cmd)).await?)?;
    Ok(RegisterNamespaceResponse::default())
}

pub(super) async fn describe(admin: &Router, r: DescribeNamespaceRequest) -> Result<DescribeNamespaceResponse, Status> {
    if !r.namespace.is_empty() {
        return Ok(describe_response(&lookup(admin, &r.namespace).await?));
    }
    if r.id.is_empty() {
        return Err(Status::invalid_argument("give a namespace name or id"));
    }
    let key = format!("ns/id/{}", r.id).into_bytes();
    let name = admin
        .read_key(SYSTEM_SHARD, &key)
        .await?
        .ok_or_else(|| Status::not_found(format!("namespace id {} not found", r.id)))?;
    let name = String::from_utf8(name).map_err(|_| Status::internal("corrupt namespace id index"))?;
    Ok(describe_response(&lookup(admin, &name).await?))
}

pub(super) async fn list(admin: &Router, r: ListNamespacesRequest) -> Result<ListNamespacesResponse, Status> {
    let pairs = admin.scan(SYSTEM_SHARD, b"ns/name/", usize::MAX).await?;
    let mut recs: Vec<NamespaceRecord> = pairs
        .into_iter()
        .map(|(_, v)| postcard::from_bytes(&v).map_err(|e| Status::internal(format!("corrupt namespace record: {e}"))))
        .collect::<Result<_, _>>()?;
    recs.sort_by(|a, b| a.name.cmp(&b.name));
    let after = String::from_utf8(r.next_page_token).map_err(|_| Status::invalid_argument("bad next_page_token"))?;
    let size = if r.page_size <= 0 { PAGE_SIZE_DEFAULT } else { r.page_size as usize };
    let page: Vec<&NamespaceRecord> = recs.iter().filter(|n| after.is_empty() || n.name > after).take(size).collect();
    let more = recs.iter().filter(|n| after.is_empty() || n.name > after).count() > page.len();
    let next_page_token =
        if more { page.last().map(|n| n.name.clone().into_bytes()).unwrap_or_default() } else { Vec::new() };
    Ok(ListNamespacesResponse { namespaces: page.into_iter().map(describe_response).collect(), next_page_token })
}

pub(super) async fn update(admin: &Router, r: UpdateNamespaceRequest) -> Result<UpdateNamespaceResponse, Status> {
    namespace::validate_name(&r.namespace).map_err(Status::invalid_argument)?;
    if r.promote_namespace || r.replication_config.is_some() {
        return Err(Status::invalid_argument("replication settings are not supported by Norn"));
    }
    let (description, owner_email, data) = match r.update_info {
        Some(i) => (Some(i.description), Some(i.owner_email), i.data.into_iter().collect()),
        None => (None, None, BTreeMap::new()),
    };
    let retention_ms = match &r.config {
        Some(c) => duration_ms(&c.workflow_execution_retention_ttl)?,
        None => None,
    };
    crate::limits::Limits::validate(&data)?;
    let cmd = NamespaceCommand::Update { name: r.namespace, description, owner_email, retention_ms, data };
    let rec = result(admin.propose_command(SYSTEM_SHARD, &ShardCommand::Namespace(cmd)).await?)?;
    let d = describe_response(&rec);
    Ok(UpdateNamespaceResponse {
        namespace_info: d.namespace_info,
        config: d.config,
        replication_config: d.replication_config,
        failover_version: 0,
        is_global_namespace: false,
    })
}

/// A random UUID (v4) for a new namespace. Chosen by the proposer, so apply stays deterministic.
fn new_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    // The node's seedable source: the OS's entropy in production, the seed in the simulator.
    norn_raft::runtime::ThreadRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}
