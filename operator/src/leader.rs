//! Lease-based leader election (coordination.k8s.io/v1). Optimistic concurrency on the Lease's
//! resourceVersion makes takeover atomic: two replicas cannot both win the same renewal.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;

pub struct LeaderElection {
    pub api: Api<Lease>,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

impl LeaderElection {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(2),
        }
    }

    fn spec(&self, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_duration.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    /// One round: returns whether this replica holds the lease afterwards.
    async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..Default::default()
                },
                spec: Some(self.spec(None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let mine = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let duration = spec
            .lease_duration_seconds
            .map(|s| SignedDuration::from_secs(s.into()))
            .unwrap_or(SignedDuration::from_secs(
                self.lease_duration.as_secs() as i64
            ));
        let expired = match (&spec.holder_identity, &spec.renew_time) {
            (None, _) | (_, None) => true,
            (Some(h), _) if h.is_empty() => true,
            (_, Some(renewed)) => renewed
                .0
                .checked_add(duration)
                .map(|until| until < Timestamp::now())
                .unwrap_or(true),
        };
        if !mine && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!mine);
        let acquired = if mine { spec.acquire_time } else { None };
        lease.spec = Some(self.spec(acquired, transitions));
        // `replace` carries the resourceVersion we read: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Keeps trying forever, publishing leadership changes.
    pub async fn run(self, leader: watch::Sender<bool>) {
        loop {
            let is_leader = match self.try_acquire_or_renew().await {
                Ok(held) => held,
                Err(e) => {
                    tracing::warn!(error = %e, lease = %self.name, "leader election round failed");
                    false
                }
            };
            leader.send_if_modified(|was| {
                if *was != is_leader {
                    tracing::info!(identity = %self.identity, leader = is_leader, "leadership changed");
                    *was = is_leader;
                    true
                } else {
                    false
                }
            });
            tokio::time::sleep(self.renew_every).await;
        }
    }

    /// Gives the lease up so another replica can take over at once.
    pub async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await
            && let Some(spec) = lease.spec.as_mut()
            && spec.holder_identity.as_deref() == Some(self.identity.as_str())
        {
            spec.holder_identity = None;
            let _ = self
                .api
                .replace(&self.name, &PostParams::default(), &lease)
                .await;
        }
    }
}
