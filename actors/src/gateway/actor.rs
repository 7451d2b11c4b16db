//! `GatewayActor`: owns the HTTP server task; a restart binds again and serves again.

use std::net::SocketAddr;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::RactorMessage;

use super::Gateway;

#[derive(RactorMessage)]
pub enum GatewayMsg {
    /// The HTTP server task ended (with why); the actor fails so its supervisor restarts it.
    ServerExited(String),
}

pub struct GatewayArgs {
    pub addr: SocketAddr,
    pub gateway: Arc<Gateway>,
}

pub struct GatewayActor;

pub struct GatewayState {
    server: tokio::task::JoinHandle<()>,
    sampler: tokio::task::JoinHandle<()>,
}

impl Actor for GatewayActor {
    type Msg = GatewayMsg;
    type State = GatewayState;
    type Arguments = GatewayArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<GatewayMsg>,
        args: GatewayArgs,
    ) -> Result<GatewayState, ActorProcessingErr> {
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .map_err(|e| format!("gateway cannot listen on {}: {e}", args.addr))?;
        let header_timeout = args.gateway.config.header_timeout.get();
        let sampler = tokio::spawn(super::dashboard::sampler(args.gateway.history.clone()));
        let app = super::http_router(args.gateway);
        tracing::info!(addr = %args.addr, "gateway listening: http://{}/v1", args.addr);
        let server = tokio::spawn(async move {
            let why = super::serve::serve(listener, app, header_timeout).await.to_string();
            let _ = myself.cast(GatewayMsg::ServerExited(why));
        });
        Ok(GatewayState { server, sampler })
    }

    async fn post_stop(&self, _: ActorRef<GatewayMsg>, state: &mut GatewayState) -> Result<(), ActorProcessingErr> {
        state.server.abort();
        state.sampler.abort();
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<GatewayMsg>,
        msg: GatewayMsg,
        _: &mut GatewayState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            GatewayMsg::ServerExited(why) => Err(format!("HTTP server ended: {why}").into()),
        }
    }
}
