//! gRPC messages and services of the control plane, generated from `common/proto`.

#[allow(missing_debug_implementations, clippy::all)]
pub mod metadata {
    tonic::include_proto!("cairn.metadata.v1");
}
