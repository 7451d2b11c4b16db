//! `KvListener`: a router's inbox for KV publications, reachable from every node. It joins the
//! `kv-listeners` process group, which every worker publishes to, and hands what arrives to its
//! router (whose own messages carry local actor references and cannot cross nodes).

use ractor::{Actor, ActorProcessingErr, ActorRef, pg};
use runtime::discovery::KV_LISTENERS;

use crate::protocol::{KvListenerMsg, RouterMsg};

pub struct KvListener;

impl Actor for KvListener {
    type Msg = KvListenerMsg;
    type State = ActorRef<RouterMsg>;
    type Arguments = ActorRef<RouterMsg>;

    async fn pre_start(
        &self,
        myself: ActorRef<KvListenerMsg>,
        router: ActorRef<RouterMsg>,
    ) -> Result<ActorRef<RouterMsg>, ActorProcessingErr> {
        pg::join(KV_LISTENERS.to_string(), vec![myself.get_cell()]);
        Ok(router)
    }

    async fn handle(
        &self,
        _: ActorRef<KvListenerMsg>,
        msg: KvListenerMsg,
        router: &mut ActorRef<RouterMsg>,
    ) -> Result<(), ActorProcessingErr> {
        let KvListenerMsg::Publish(p) = msg;
        router.cast(RouterMsg::Kv(p))?;
        Ok(())
    }
}
