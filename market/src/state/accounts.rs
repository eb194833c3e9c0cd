//! Accounts: the genesis accounts, registration by self-signature or by the issuer, deposits
//! and balances. An account also holds the nonce its next transaction must carry, which
//! [`State::apply`] checks and advances.

use super::State;
use crate::error::TxError;
use crate::tx::{AccountId, Role};
use serde::{Deserialize, Serialize};

/// A registered account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// What it may do.
    pub role: Role,
    /// The nonce its next transaction must carry.
    pub next_nonce: u64,
    /// Credits.
    pub balance: u64,
}

impl State {
    /// The state after genesis: the given accounts with zero balances.
    pub fn with_accounts(accounts: impl IntoIterator<Item = (AccountId, Role)>) -> Self {
        let mut state = State::default();
        for (id, role) in accounts {
            state.accounts.insert(
                id,
                Account {
                    role,
                    next_nonce: 0,
                    balance: 0,
                },
            );
        }
        state
    }

    /// An account.
    pub fn account(&self, id: &AccountId) -> Option<&Account> {
        self.accounts.get(id)
    }

    /// Balance of an account (zero if unknown).
    pub fn balance(&self, id: &AccountId) -> u64 {
        self.accounts.get(id).map_or(0, |a| a.balance)
    }

    /// All accounts.
    pub fn accounts(&self) -> impl Iterator<Item = (&AccountId, &Account)> {
        self.accounts.iter()
    }

    /// Credits issued by all deposits.
    pub fn total_issued(&self) -> u64 {
        *self.total_issued
    }

    /// Sum of all balances.
    pub fn total_balances(&self) -> u128 {
        self.accounts.values().map(|a| u128::from(a.balance)).sum()
    }

    pub(super) fn require_role(
        &self,
        account: AccountId,
        allowed: &[Role],
        required: &'static str,
    ) -> Result<&Account, TxError> {
        let found = self
            .accounts
            .get(&account)
            .ok_or(TxError::UnknownAccount(account))?;
        if !allowed.contains(&found.role) {
            return Err(TxError::WrongRole {
                account,
                actual: found.role,
                required,
            });
        }
        Ok(found)
    }

    pub(super) fn require_fund(&self, fund: AccountId) -> Result<(), TxError> {
        match self.accounts.get(&fund) {
            Some(account) if account.role == Role::Fund => Ok(()),
            _ => Err(TxError::NotAFund(fund)),
        }
    }

    pub(super) fn register(
        &mut self,
        signer: AccountId,
        account: AccountId,
        role: Role,
    ) -> Result<(), TxError> {
        account.verifying_key()?;
        if self.accounts.contains_key(&account) {
            return Err(TxError::AlreadyRegistered(account));
        }
        match role {
            Role::Patient | Role::Buyer => {
                if signer != account {
                    return Err(TxError::RegistrationNotSelfSigned {
                        role,
                        signer,
                        account,
                    });
                }
            }
            _ => {
                if !self.accounts.contains_key(&signer) {
                    return Err(TxError::AdmissionRequiresIssuer { role, signer });
                }
                self.require_role(signer, &[Role::Issuer], "issuer")?;
            }
        }
        self.accounts.insert(
            account,
            Account {
                role,
                next_nonce: 0,
                balance: 0,
            },
        );
        Ok(())
    }

    pub(super) fn deposit(
        &mut self,
        signer: AccountId,
        to: AccountId,
        amount: u64,
    ) -> Result<(), TxError> {
        self.require_role(signer, &[Role::Issuer], "issuer")?;
        if amount == 0 {
            return Err(TxError::ZeroAmount);
        }
        let recipient = self.accounts.get(&to).ok_or(TxError::UnknownAccount(to))?;
        let new_balance = recipient
            .balance
            .checked_add(amount)
            .ok_or(TxError::AmountOverflow)?;
        let new_total = self
            .total_issued
            .checked_add(amount)
            .ok_or(TxError::AmountOverflow)?;
        if let Some(recipient) = self.accounts.get_mut(&to) {
            recipient.balance = new_balance;
        }
        self.total_issued.set(new_total);
        Ok(())
    }
}
