//! The Ledger service over real gRPC on loopback: what it serves verifies offline against the
//! ledger's public key (inclusion, consistency, blocks), malformed and unknown inputs get the
//! documented codes (undecodable protobuf and heights beyond the chain included), oversized
//! messages are refused, and the process answers health checks and reflection.

mod common;

use std::sync::{Arc, Mutex};

use cohortex_proto::v1;
use cohortex_proto::v1::ledger_client::LedgerClient;
use common::{raw_grpc, Fixture, Party};
use ed25519_dalek::VerifyingKey;
use market::server::{serve_ledger_and_consent, ServeError, MAX_MESSAGE_BYTES};
use market::tx::MAX_SIGNED_TX_LEN;
use market::{
    verify_consistency, verify_inclusion, AccountId, Action, Hash32, ListingId, Purpose, Receipt,
    Role, SignedTreeHead, TxBody, TxId,
};
use prost::Message;
use rand_chacha::ChaCha20Rng;
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::Code;

/// A ledger in a temporary directory served on an ephemeral loopback port.
struct Served {
    endpoint: String,
    chain_id: Hash32,
    ledger_key: VerifyingKey,
    issuer: Party,
    rng: ChaCha20Rng,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServeError>>,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start() -> Self {
        let Fixture {
            ledger,
            issuer,
            rng,
            dir,
            ledger_key,
            clock: _,
        } = Fixture::new();
        let chain_id = ledger.chain_id();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(serve_ledger_and_consent(
            Arc::new(Mutex::new(ledger)),
            listener,
            async {
                let _ = stop.await;
            },
        ));
        Served {
            endpoint,
            chain_id,
            ledger_key: ledger_key.verifying_key(),
            issuer,
            rng,
            shutdown,
            task,
            _dir: dir,
        }
    }

    async fn client(&self) -> LedgerClient<Channel> {
        LedgerClient::connect(self.endpoint.clone()).await.unwrap()
    }

    async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint.clone())
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    fn envelope(&self, party: &Party, action: Action) -> v1::SignedTransaction {
        let body = TxBody {
            chain_id: self.chain_id,
            signer: party.id,
            nonce: party.nonce,
            action,
        };
        v1::SignedTransaction {
            envelope: body.sign(&party.key).unwrap().bytes,
        }
    }

    /// Submits `action` signed by `party`, which must be accepted; advances the nonce.
    async fn submit(
        &self,
        client: &mut LedgerClient<Channel>,
        party: &mut Party,
        action: Action,
    ) -> v1::TransactionResult {
        let result = client
            .submit_transaction(self.envelope(party, action))
            .await
            .unwrap()
            .into_inner();
        party.nonce += 1;
        result
    }

    /// A new buyer, registered through the service.
    async fn new_buyer(&mut self, client: &mut LedgerClient<Channel>) -> (Party, TxId) {
        let mut buyer = Party::new(&mut self.rng);
        let register = Action::RegisterAccount {
            account: buyer.id,
            role: Role::Buyer,
        };
        let result = self.submit(client, &mut buyer, register).await;
        (buyer, tx_id(&result.tx_id))
    }

    async fn stop(self) {
        self.shutdown.send(()).unwrap();
        self.task.await.unwrap().unwrap();
    }
}

fn tx_id(bytes: &[u8]) -> TxId {
    TxId(Hash32(bytes.try_into().unwrap()))
}

fn concat(hashes: &[Vec<u8>]) -> Vec<u8> {
    assert!(hashes.iter().all(|hash| hash.len() == 32));
    hashes.concat()
}

fn head_of(message: Option<v1::SignedTreeHead>) -> SignedTreeHead {
    SignedTreeHead::try_from(message.unwrap()).unwrap()
}

#[tokio::test]
async fn inclusion_proof_fetched_over_grpc_verifies_against_the_signed_tree_head() {
    let mut served = Served::start().await;
    let mut client = served.client().await;
    let mut ids = Vec::new();
    for expected_leaf in 0..5u64 {
        let (_, id) = served.new_buyer(&mut client).await;
        let stored = client
            .get_transaction(v1::GetTransactionRequest {
                tx_id: id.0 .0.to_vec(),
            })
            .await
            .unwrap()
            .into_inner();
        // One transaction per block: leaf i is in block i + 1.
        assert_eq!(stored.leaf_index, expected_leaf);
        assert_eq!(stored.height, expected_leaf + 1);
        ids.push((id, stored.envelope));
    }

    let (txid, envelope) = &ids[2];
    let proof = client
        .get_inclusion_proof(v1::GetInclusionProofRequest {
            tx_id: txid.0 .0.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    let head = head_of(proof.tree_head.clone());
    head.verify(&served.ledger_key).unwrap();
    assert_eq!(head.header.tree_size, 5);
    assert_eq!(proof.tree_size, 5);
    assert_eq!(proof.leaf_index, 2);
    // A tree of 5 leaves: leaf 2's audit path is its sibling leaf 3, the node over leaves 0
    // and 1, and leaf 4 (RFC 6962 §2.1.1), leaf hashes being SHA-256(0x00 || txid).
    let leaf_hash = |id: &TxId| {
        Sha256::new_with_prefix([0u8])
            .chain_update(id.0 .0)
            .finalize()
    };
    assert_eq!(proof.hashes.len(), 3);
    assert_eq!(proof.hashes[0], leaf_hash(&ids[3].0).to_vec());
    assert_eq!(proof.hashes[2], leaf_hash(&ids[4].0).to_vec());
    let latest = client
        .get_signed_tree_head(v1::GetSignedTreeHeadRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(SignedTreeHead::try_from(latest).unwrap(), head);

    let path = concat(&proof.hashes);
    verify_inclusion(
        &head.header.tree_root,
        head.header.tree_size,
        txid,
        2,
        &path,
    )
    .unwrap();
    let receipt = Receipt {
        tx: envelope.clone(),
        leaf_index: proof.leaf_index,
        inclusion_proof: path.clone(),
        head: head.clone(),
    };
    assert_eq!(receipt.verify(&served.ledger_key).unwrap().id(), *txid);

    // The same proof does not place another transaction, or this one elsewhere.
    assert!(verify_inclusion(&head.header.tree_root, 5, &ids[3].0, 2, &path).is_err());
    assert!(verify_inclusion(&head.header.tree_root, 5, txid, 3, &path).is_err());
    let mut flipped = path;
    flipped[40] ^= 1;
    assert!(verify_inclusion(&head.header.tree_root, 5, txid, 2, &flipped).is_err());
    served.stop().await;
}

#[tokio::test]
async fn consistency_proof_fetched_over_grpc_links_an_older_tree_head_to_the_newest() {
    let mut served = Served::start().await;
    let mut client = served.client().await;
    for _ in 0..3 {
        served.new_buyer(&mut client).await;
    }
    let old = client
        .get_signed_tree_head(v1::GetSignedTreeHeadRequest {})
        .await
        .unwrap()
        .into_inner();
    let old = SignedTreeHead::try_from(old).unwrap();
    for _ in 0..4 {
        served.new_buyer(&mut client).await;
    }
    let proof = client
        .get_consistency_proof(v1::GetConsistencyProofRequest { from_tree_size: 3 })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((proof.from_tree_size, proof.to_tree_size), (3, 7));
    let new = head_of(proof.tree_head);
    assert_eq!(new.header.tree_size, 7);
    verify_consistency(&old, &new, &concat(&proof.hashes), &served.ledger_key).unwrap();
    // The proof is for this pair of trees only.
    let mut flipped = concat(&proof.hashes);
    flipped[0] ^= 1;
    assert!(verify_consistency(&old, &new, &flipped, &served.ledger_key).is_err());

    let zero = client
        .get_consistency_proof(v1::GetConsistencyProofRequest { from_tree_size: 0 })
        .await
        .unwrap_err();
    assert_eq!(zero.code(), Code::InvalidArgument);
    assert!(zero.message().contains("from_tree_size"), "{zero:?}");
    let beyond = client
        .get_consistency_proof(v1::GetConsistencyProofRequest { from_tree_size: 8 })
        .await
        .unwrap_err();
    assert_eq!(beyond.code(), Code::OutOfRange);
    assert!(beyond.message().contains("from_tree_size"), "{beyond:?}");
    served.stop().await;
}

#[tokio::test]
async fn block_lists_its_transaction_ids_under_its_signed_head() {
    let mut served = Served::start().await;
    let mut client = served.client().await;
    let (_, first) = served.new_buyer(&mut client).await;
    let (_, second) = served.new_buyer(&mut client).await;
    for (height, id) in [(1u64, first), (2, second)] {
        let block = client
            .get_block(v1::GetBlockRequest { height })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(block.height, height);
        assert_eq!(block.tx_ids, vec![id.0 .0.to_vec()]);
        let head = head_of(block.tree_head.clone());
        head.verify(&served.ledger_key).unwrap();
        assert_eq!(block.header, head.header.to_bytes().to_vec());
        assert_eq!(head.header.height, height);
        assert_eq!(head.header.tx_count, 1);
    }
    let zero = client
        .get_block(v1::GetBlockRequest { height: 0 })
        .await
        .unwrap_err();
    assert_eq!(zero.code(), Code::InvalidArgument);
    assert!(zero.message().contains("height"), "{zero:?}");
    let missing = client
        .get_block(v1::GetBlockRequest { height: 3 })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    served.stop().await;
}

#[tokio::test]
async fn get_block_beyond_the_chain_is_not_found() {
    let mut served = Served::start().await;
    let mut client = served.client().await;
    served.new_buyer(&mut client).await;
    // One block: the next height, the largest SQLite integer and one past it (where a u64
    // height no longer fits SQLite's i64), and u64::MAX.
    let beyond_sqlite = u64::try_from(i64::MAX).unwrap() + 1;
    for height in [2, beyond_sqlite - 1, beyond_sqlite, u64::MAX] {
        let missing = client
            .get_block(v1::GetBlockRequest { height })
            .await
            .unwrap_err();
        assert_eq!(
            missing.code(),
            Code::NotFound,
            "height {height}: {missing:?}"
        );
        assert_eq!(missing.message(), format!("no block at height {height}"));
    }
    served.stop().await;
}

#[tokio::test]
async fn consistency_proof_from_u64_max_is_out_of_range() {
    let mut served = Served::start().await;
    let mut client = served.client().await;
    served.new_buyer(&mut client).await;
    let beyond = client
        .get_consistency_proof(v1::GetConsistencyProofRequest {
            from_tree_size: u64::MAX,
        })
        .await
        .unwrap_err();
    assert_eq!(beyond.code(), Code::OutOfRange, "{beyond:?}");
    assert!(beyond.message().contains("from_tree_size"), "{beyond:?}");
    served.stop().await;
}

#[tokio::test]
async fn undecodable_protobuf_is_invalid_argument() {
    let served = Served::start().await;
    // 0xff 0xff 0xff: a varint key that never ends.
    for method in [
        "/cohortex.v1.Ledger/GetBlock",
        "/cohortex.v1.Ledger/SubmitTransaction",
        "/cohortex.v1.Consent/ListCurrentConsents",
    ] {
        let refused = raw_grpc::call(
            served.channel().await,
            method,
            vec![0xff, 0xff, 0xff],
            MetadataMap::new(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::InvalidArgument,
            "{method}: {refused:?}"
        );
        assert!(refused.message().contains("protobuf"), "{refused:?}");
    }
    // A field that is not what its tag says: field 1 of GetBlockRequest (a varint) sent as
    // a length-delimited field.
    let wrong_type = raw_grpc::call(
        served.channel().await,
        "/cohortex.v1.Ledger/GetBlock",
        vec![(1 << 3) | 2, 1, 7],
        MetadataMap::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(wrong_type.code(), Code::InvalidArgument, "{wrong_type:?}");
    // The same path with a well-formed message is served.
    let well_formed = raw_grpc::call(
        served.channel().await,
        "/cohortex.v1.Ledger/GetBlock",
        v1::GetBlockRequest { height: 1 }.encode_to_vec(),
        MetadataMap::new(),
    )
    .await
    .unwrap_err();
    assert_eq!(well_formed.code(), Code::NotFound, "{well_formed:?}");
    served.stop().await;
}

#[tokio::test]
async fn unknown_tx_id_is_not_found() {
    let mut served = Served::start().await;
    let mut client = served.client().await;
    served.new_buyer(&mut client).await;
    let unknown = vec![0xab; 32];
    let read = client
        .get_transaction(v1::GetTransactionRequest {
            tx_id: unknown.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(read.code(), Code::NotFound, "{read:?}");
    let proof = client
        .get_inclusion_proof(v1::GetInclusionProofRequest { tx_id: unknown })
        .await
        .unwrap_err();
    assert_eq!(proof.code(), Code::NotFound, "{proof:?}");
    served.stop().await;
}

#[tokio::test]
async fn empty_ledger_has_no_signed_tree_head() {
    let served = Served::start().await;
    let mut client = served.client().await;
    let status = client
        .get_signed_tree_head(v1::GetSignedTreeHeadRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    served.stop().await;
}

#[tokio::test]
async fn malformed_fields_are_invalid_argument_naming_the_field() {
    let served = Served::start().await;
    let mut client = served.client().await;
    let short_id = client
        .get_transaction(v1::GetTransactionRequest { tx_id: vec![1; 31] })
        .await
        .unwrap_err();
    assert_eq!(short_id.code(), Code::InvalidArgument);
    assert!(
        short_id.message().contains("tx_id must be 32 bytes"),
        "{short_id:?}"
    );
    let short_account = client
        .get_balance(v1::GetBalanceRequest {
            account: vec![1; 3],
        })
        .await
        .unwrap_err();
    assert_eq!(short_account.code(), Code::InvalidArgument);
    assert!(
        short_account.message().contains("account must be 32 bytes"),
        "{short_account:?}"
    );
    let empty = client
        .submit_transaction(v1::SignedTransaction { envelope: vec![] })
        .await
        .unwrap_err();
    assert_eq!(empty.code(), Code::InvalidArgument);
    assert!(empty.message().contains("envelope"), "{empty:?}");
    let garbage = client
        .submit_transaction(v1::SignedTransaction {
            envelope: vec![1; 80],
        })
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::InvalidArgument, "{garbage:?}");
    served.stop().await;
}

#[tokio::test]
async fn refused_transactions_map_to_their_status_codes() {
    let mut served = Served::start().await;
    let mut client = served.client().await;
    let (buyer, _) = served.new_buyer(&mut client).await;
    let deposit = Action::Deposit {
        to: buyer.id,
        amount: 250,
    };

    // A buyer may not issue credits.
    let by_buyer = client
        .submit_transaction(served.envelope(&buyer, deposit.clone()))
        .await
        .unwrap_err();
    assert_eq!(by_buyer.code(), Code::PermissionDenied, "{by_buyer:?}");

    // A flipped signature byte.
    let mut forged = served.envelope(&served.issuer, deposit.clone());
    forged.envelope[5] ^= 1;
    let forged = client.submit_transaction(forged).await.unwrap_err();
    assert_eq!(forged.code(), Code::Unauthenticated, "{forged:?}");

    // Accepted once, then replayed.
    let signed = served.envelope(&served.issuer, deposit);
    client.submit_transaction(signed.clone()).await.unwrap();
    served.issuer.nonce += 1;
    let replayed = client.submit_transaction(signed).await.unwrap_err();
    assert_eq!(replayed.code(), Code::FailedPrecondition, "{replayed:?}");
    assert!(replayed.message().contains("replayed"), "{replayed:?}");

    // An account that registers twice.
    let again = Action::RegisterAccount {
        account: buyer.id,
        role: Role::Buyer,
    };
    let twice = client
        .submit_transaction(served.envelope(&buyer, again))
        .await
        .unwrap_err();
    assert_eq!(twice.code(), Code::AlreadyExists, "{twice:?}");

    let balance = client
        .get_balance(v1::GetBalanceRequest {
            account: buyer.id.0.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(balance.available, 250);
    let stranger = AccountId([9; 32]);
    let unknown = client
        .get_balance(v1::GetBalanceRequest {
            account: stranger.0.to_vec(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    served.stop().await;
}

#[tokio::test]
async fn oversized_message_is_refused() {
    let served = Served::start().await;
    let mut client = served.client().await;
    // Larger than the gRPC limit: refused by the transport before the handler runs.
    let huge = client
        .submit_transaction(v1::SignedTransaction {
            envelope: vec![1; MAX_MESSAGE_BYTES + 1],
        })
        .await
        .unwrap_err();
    assert_eq!(huge.code(), Code::OutOfRange, "{huge:?}");
    // Within the gRPC limit but larger than a transaction may be.
    let large = client
        .submit_transaction(v1::SignedTransaction {
            envelope: vec![1; MAX_SIGNED_TX_LEN + 1],
        })
        .await
        .unwrap_err();
    assert_eq!(large.code(), Code::InvalidArgument, "{large:?}");
    assert!(large.message().contains("envelope"), "{large:?}");
    // The connection is still usable.
    let status = client
        .get_signed_tree_head(v1::GetSignedTreeHeadRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    served.stop().await;
}

#[tokio::test]
async fn health_reports_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    let served = Served::start().await;
    let mut health = HealthClient::new(served.channel().await);
    for service in ["", "cohortex.v1.Ledger", "cohortex.v1.Consent"] {
        let answer = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.status(), ServingStatus::Serving, "{service:?}");
    }
    let unknown = health
        .check(HealthCheckRequest {
            service: "cohortex.v1.Market".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    served.stop().await;
}

#[tokio::test]
async fn reflection_lists_the_ledger_and_consent_services() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let served = Served::start().await;
    let mut reflection = ServerReflectionClient::new(served.channel().await);
    let list = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tonic::codegen::tokio_stream::once(list))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(listed)) = answer.message_response else {
        panic!("not a list of services: {answer:?}");
    };
    let mut names: Vec<String> = listed.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "cohortex.v1.Consent",
            "cohortex.v1.Ledger",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
        ]
    );
    served.stop().await;
}

fn listing_terms() -> market::ListingTerms {
    market::ListingTerms {
        price_per_query: 1,
        allowed_purposes: [Purpose::AcademicResearch].into_iter().collect(),
        min_cohort_size: 1,
        epsilon_budget_micro: 10_000_000,
        max_epsilon_per_order_micro: 1_000_000,
        compensation: market::Compensation::Payment,
    }
}

#[tokio::test]
async fn ledger_refuses_orders_not_placed_through_market() {
    let mut served = Served::start().await;
    let mut client = served.client().await;
    let (buyer, _) = served.new_buyer(&mut client).await;
    let head_before = client
        .get_signed_tree_head(v1::GetSignedTreeHeadRequest {})
        .await
        .unwrap()
        .into_inner();
    // Seven raw orders with a long life used to lock every listing's budget: the Ledger
    // service takes no order, listing or trial posting at all, whatever its terms.
    let placed_through_the_market = [
        Action::OrderQueryFor {
            query_hash: Hash32([9; 32]),
            listings: vec![ListingId::new("any")],
            purpose: Purpose::AcademicResearch,
            epsilon_micro: 1_000_000,
            expires_at: u64::MAX,
            result_key: vec![1; 38],
        },
        Action::OrderQuery {
            query_hash: Hash32([9; 32]),
            listings: vec![ListingId::new("any")],
            purpose: Purpose::AcademicResearch,
            epsilon_micro: 1_000_000,
            expires_at: u64::MAX,
        },
        Action::PublishListing {
            listing: ListingId::new("unchecked"),
            schema_hash: Hash32([3; 32]),
            terms: listing_terms(),
        },
        Action::UpdateListing {
            listing: ListingId::new("unchecked"),
            terms: listing_terms(),
        },
        Action::PostTrial(market::TrialPosting {
            trial: "t".into(),
            summary: "s".into(),
            contact_key: [6; 32],
            evaluation_key: [5; 32],
            criteria: vec![1],
            listings: vec![ListingId::new("any")],
            expires_at: u64::MAX,
        }),
    ];
    for action in placed_through_the_market {
        let refused = client
            .submit_transaction(served.envelope(&buyer, action))
            .await
            .expect_err("the Ledger service took an order not placed through the market");
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().contains("through the Market service"),
            "{refused:?}"
        );
    }
    let head_after = client
        .get_signed_tree_head(v1::GetSignedTreeHeadRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        head_after.tree_size, head_before.tree_size,
        "nothing was appended"
    );
    served.stop().await;
}

#[tokio::test]
async fn self_registration_rate_limited() {
    use market::server::rate::SELF_REGISTRATIONS_PER_MINUTE;
    let mut served = Served::start().await;
    let mut client = served.client().await;
    // Each account is state every node replays forever, and registering costs nothing: one
    // client may register a minute's allowance, and no more.
    for _ in 0..SELF_REGISTRATIONS_PER_MINUTE {
        served.new_buyer(&mut client).await;
    }
    let extra = Party::new(&mut served.rng);
    let refused = client
        .submit_transaction(served.envelope(
            &extra,
            Action::RegisterAccount {
                account: extra.id,
                role: Role::Buyer,
            },
        ))
        .await
        .expect_err("one client registered more accounts than the limit allows");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("self-registrations"),
        "{refused:?}"
    );
    // The Consent service counts in the same allowance.
    let patient = Party::new(&mut served.rng);
    let by_consent = cohortex_proto::v1::consent_client::ConsentClient::new(served.channel().await)
        .register(served.envelope(
            &patient,
            Action::RegisterAccount {
                account: patient.id,
                role: Role::Patient,
            },
        ))
        .await
        .expect_err("the Consent service registered past the limit");
    assert_eq!(by_consent.code(), Code::ResourceExhausted, "{by_consent:?}");
    // An issuer's admission is not a self-registration, and still goes through.
    let node = Party::new(&mut served.rng);
    let stand_in = Party::new(&mut served.rng);
    let mut issuer = std::mem::replace(&mut served.issuer, stand_in);
    served
        .submit(
            &mut client,
            &mut issuer,
            Action::RegisterAccount {
                account: node.id,
                role: Role::ComputeNode,
            },
        )
        .await;
    served.stop().await;
}

#[tokio::test]
async fn get_account_reports_role_next_nonce_and_balance() {
    let mut served = Served::start().await;
    let mut client = served.client().await;
    let (buyer, _) = served.new_buyer(&mut client).await;
    let before = client
        .get_account(v1::GetAccountRequest {
            account: buyer.id.0.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(before.role, v1::AccountRole::Buyer as i32);
    // The buyer registered itself with its first transaction: its next is nonce 1.
    assert_eq!(before.next_nonce, 1);
    assert_eq!(before.balance, 0);

    let issuer_before = client
        .get_account(v1::GetAccountRequest {
            account: served.issuer.id.0.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issuer_before.role, v1::AccountRole::Issuer as i32);
    assert_eq!(issuer_before.next_nonce, served.issuer.nonce);
    let deposit = served.envelope(
        &served.issuer,
        Action::Deposit {
            to: buyer.id,
            amount: 250,
        },
    );
    client.submit_transaction(deposit).await.unwrap();
    served.issuer.nonce += 1;
    let after = client
        .get_account(v1::GetAccountRequest {
            account: buyer.id.0.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.balance, 250);
    let issuer_after = client
        .get_account(v1::GetAccountRequest {
            account: served.issuer.id.0.to_vec(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(issuer_after.next_nonce, issuer_before.next_nonce + 1);

    let unknown = client
        .get_account(v1::GetAccountRequest {
            account: vec![9; 32],
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert!(unknown.message().starts_with("account:"), "{unknown:?}");
    let short = client
        .get_account(v1::GetAccountRequest {
            account: vec![1; 3],
        })
        .await
        .unwrap_err();
    assert_eq!(short.code(), Code::InvalidArgument, "{short:?}");
    assert!(short.message().contains("account"), "{short:?}");
    served.stop().await;
}
