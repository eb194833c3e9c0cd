//! The gRPC method paths that request signatures cover (`cohortex_types::auth`), one
//! constant per method, defined here only: the services check them and the clients sign them.

/// The compute node's `cohortex.v1.Compute` service.
pub mod compute {
    /// DkgDeal.
    pub const DKG_DEAL: &str = "/cohortex.v1.Compute/DkgDeal";
    /// DeliverShare.
    pub const DELIVER_SHARE: &str = "/cohortex.v1.Compute/DeliverShare";
    /// DkgReceive.
    pub const DKG_RECEIVE: &str = "/cohortex.v1.Compute/DkgReceive";
    /// DkgJustify.
    pub const DKG_JUSTIFY: &str = "/cohortex.v1.Compute/DkgJustify";
    /// DkgFinish.
    pub const DKG_FINISH: &str = "/cohortex.v1.Compute/DkgFinish";
    /// Key ceremony, round 5.
    pub const DKG_CONFIRM: &str = "/cohortex.v1.Compute/DkgConfirm";
    /// Contribute.
    pub const CONTRIBUTE: &str = "/cohortex.v1.Compute/Contribute";
    /// ContributionParticipants.
    pub const CONTRIBUTION_PARTICIPANTS: &str = "/cohortex.v1.Compute/ContributionParticipants";
    /// AddNoise.
    pub const ADD_NOISE: &str = "/cohortex.v1.Compute/AddNoise";
    /// KeySwitch.
    pub const KEY_SWITCH: &str = "/cohortex.v1.Compute/KeySwitch";
    /// CosignReceipt.
    pub const COSIGN_RECEIPT: &str = "/cohortex.v1.Compute/CosignReceipt";
    /// PutEvaluationKey (a client stream, signed over an empty body).
    pub const PUT_EVALUATION_KEY: &str = "/cohortex.v1.Compute/PutEvaluationKey";
    /// Feasibility.
    pub const FEASIBILITY: &str = "/cohortex.v1.Compute/Feasibility";
    /// `Compute.AcceptInvitation`.
    pub const ACCEPT_INVITATION: &str = "/cohortex.v1.Compute/AcceptInvitation";
    /// Consent.ListCurrentConsents, called by the node.
    pub use super::consent::LIST_CURRENT_CONSENTS;
}

/// The market's `cohortex.v1.Market` service (the signed methods).
pub mod market {
    /// GetOrder.
    pub const GET_ORDER: &str = "/cohortex.v1.Market/GetOrder";
    /// TrialReplies.
    pub const TRIAL_REPLIES: &str = "/cohortex.v1.Market/TrialReplies";
    /// PutEvaluationKey (a client stream, signed over an empty body).
    pub const PUT_EVALUATION_KEY: &str = "/cohortex.v1.Market/PutEvaluationKey";
}

/// The market's `cohortex.v1.Consent` service (the signed methods).
pub mod consent {
    /// ListConsents.
    pub const LIST_CONSENTS: &str = "/cohortex.v1.Consent/ListConsents";
    /// ListEarnings.
    pub const LIST_EARNINGS: &str = "/cohortex.v1.Consent/ListEarnings";
    /// ListCurrentConsents (called by nodes).
    pub const LIST_CURRENT_CONSENTS: &str = "/cohortex.v1.Consent/ListCurrentConsents";
}
