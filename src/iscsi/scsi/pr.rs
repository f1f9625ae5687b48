//! Persistent reservations (SPC-4 5.12) as a pure state machine: registrations by I_T nexus
//! and key, the reservation, the generation, APTPL; the conflict table; and the on-disk
//! format the LU saves when APTPL is set (see docs/iscsi-scsi.md, "APTPL file").
//!
//! Nothing here does I/O: [`PrState::out`] returns the unit attentions to establish and the
//! nexuses whose tasks must be aborted; the LU applies them and saves [`PrState::encode`].

use super::cdb::Access;
use super::sense::{asc, Sense};
use crate::iscsi::types::Nexus;

/// Reservation types (SPC-4 table 169).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrType {
    WriteExclusive = 1,
    ExclusiveAccess = 3,
    WriteExclusiveRegistrantsOnly = 5,
    ExclusiveAccessRegistrantsOnly = 6,
    WriteExclusiveAllRegistrants = 7,
    ExclusiveAccessAllRegistrants = 8,
}

impl PrType {
    pub fn from_code(code: u8) -> Option<PrType> {
        Some(match code {
            1 => PrType::WriteExclusive,
            3 => PrType::ExclusiveAccess,
            5 => PrType::WriteExclusiveRegistrantsOnly,
            6 => PrType::ExclusiveAccessRegistrantsOnly,
            7 => PrType::WriteExclusiveAllRegistrants,
            8 => PrType::ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }

    /// Every registrant is a holder (the "all registrants" types).
    pub fn all_registrants(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants
        )
    }

    /// Registrants may access the medium as the holder does (RO and AR types).
    fn registrants_admitted(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }

    /// Others may read (the Write Exclusive family).
    fn others_may_read(self) -> bool {
        matches!(
            self,
            PrType::WriteExclusive | PrType::WriteExclusiveRegistrantsOnly | PrType::WriteExclusiveAllRegistrants
        )
    }
}

/// PERSISTENT RESERVE OUT service actions.
pub mod out_sa {
    pub const REGISTER: u8 = 0;
    pub const RESERVE: u8 = 1;
    pub const RELEASE: u8 = 2;
    pub const CLEAR: u8 = 3;
    pub const PREEMPT: u8 = 4;
    pub const PREEMPT_AND_ABORT: u8 = 5;
    pub const REGISTER_AND_IGNORE: u8 = 6;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    pub nexus: Nexus,
    pub key: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The nexus that reserved (for the all-registrants types every registrant holds it).
    pub holder: Nexus,
    pub kind: PrType,
}

/// The parameter list of PERSISTENT RESERVE OUT (the 24-byte basic form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OutParams {
    pub key: u64,
    pub sa_key: u64,
    pub aptpl: bool,
}

/// What a PERSISTENT RESERVE OUT did besides changing the state.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Effects {
    /// Unit attentions to establish for these nexuses.
    pub attentions: Vec<(Nexus, (u8, u8))>,
    /// Nexuses whose tasks PREEMPT AND ABORT aborts (the session owns the task table).
    pub aborted: Vec<Nexus>,
}

#[derive(Debug)]
pub enum PrError {
    /// RESERVATION CONFLICT status.
    Conflict,
    /// CHECK CONDITION with this sense.
    Check(Sense),
}

/// Registrations, reservation and generation of one logical unit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PrState {
    pub generation: u32,
    pub regs: Vec<Registration>,
    pub res: Option<Reservation>,
    /// Activate Persist Through Power Loss, as last set by a PERSISTENT RESERVE OUT.
    pub aptpl: bool,
}

impl PrState {
    pub fn key_of(&self, nexus: &Nexus) -> Option<u64> {
        self.regs.iter().find(|r| &r.nexus == nexus).map(|r| r.key)
    }

    /// True when `nexus` holds the reservation (any registrant for the all-registrants types).
    pub fn is_holder(&self, nexus: &Nexus) -> bool {
        match &self.res {
            Some(r) if r.kind.all_registrants() => self.key_of(nexus).is_some(),
            Some(r) => &r.holder == nexus,
            None => false,
        }
    }

    /// The SPC-4 conflict table: may `nexus` run a command of class `access` now?
    pub fn allows(&self, nexus: &Nexus, access: Access) -> bool {
        let Some(res) = &self.res else { return true };
        if self.is_holder(nexus) {
            return access != Access::Spc2;
        }
        match access {
            Access::Always | Access::Pr => true,
            Access::Spc2 => false,
            _ if res.kind.registrants_admitted() && self.key_of(nexus).is_some() => true,
            Access::Read => res.kind.others_may_read(),
            Access::Write => false,
        }
    }

    fn others(&self, me: &Nexus) -> Vec<Nexus> {
        self.regs
            .iter()
            .filter(|r| &r.nexus != me)
            .map(|r| r.nexus.clone())
            .collect()
    }

    /// Drops the registration of `nexus`, releasing what goes with it.
    fn unregister(&mut self, nexus: &Nexus, fx: &mut Effects) {
        self.regs.retain(|r| &r.nexus != nexus);
        let Some(res) = &self.res else { return };
        if res.kind.all_registrants() {
            if self.regs.is_empty() {
                self.res = None;
            }
        } else if &res.holder == nexus {
            let kind = res.kind;
            self.res = None;
            if kind.registrants_admitted() {
                for n in self.others(nexus) {
                    fx.attentions.push((n, asc::RESERVATIONS_RELEASED));
                }
            }
        }
    }

    /// Executes PERSISTENT RESERVE OUT service action `sa` with type code `type_code`.
    pub fn out(&mut self, nexus: &Nexus, sa: u8, type_code: u8, p: &OutParams) -> Result<Effects, PrError> {
        let mut fx = Effects::default();
        let mine = self.key_of(nexus);
        match sa {
            out_sa::REGISTER | out_sa::REGISTER_AND_IGNORE => {
                if sa == out_sa::REGISTER && p.key != mine.unwrap_or(0) {
                    return Err(PrError::Conflict);
                }
                match (mine, p.sa_key) {
                    (None, 0) => {
                        // Nothing to register; APTPL still takes the new value (SPC-4 5.12.7).
                        self.aptpl = p.aptpl;
                        return Ok(fx);
                    }
                    (None, k) => self.regs.push(Registration {
                        nexus: nexus.clone(),
                        key: k,
                    }),
                    (Some(_), 0) => self.unregister(nexus, &mut fx),
                    (Some(_), k) => {
                        for r in self.regs.iter_mut().filter(|r| &r.nexus == nexus) {
                            r.key = k;
                        }
                    }
                }
                self.aptpl = p.aptpl;
                self.generation = self.generation.wrapping_add(1);
                Ok(fx)
            }
            out_sa::RESERVE => {
                let kind = self.check_key(mine, p, type_code)?;
                match &self.res {
                    Some(r) if self.is_holder(nexus) && r.kind == kind => Ok(fx),
                    Some(_) => Err(PrError::Conflict),
                    None => {
                        self.res = Some(Reservation {
                            holder: nexus.clone(),
                            kind,
                        });
                        Ok(fx)
                    }
                }
            }
            out_sa::RELEASE => {
                if mine != Some(p.key) {
                    return Err(PrError::Conflict);
                }
                let Some(res) = self.res.clone() else { return Ok(fx) };
                if !self.is_holder(nexus) {
                    return Ok(fx);
                }
                if PrType::from_code(type_code) != Some(res.kind) {
                    return Err(PrError::Check(Sense::illegal(asc::INVALID_RELEASE_OF_PR)));
                }
                self.res = None;
                if res.kind.registrants_admitted() {
                    for n in self.others(nexus) {
                        fx.attentions.push((n, asc::RESERVATIONS_RELEASED));
                    }
                }
                Ok(fx)
            }
            out_sa::CLEAR => {
                if mine != Some(p.key) {
                    return Err(PrError::Conflict);
                }
                for n in self.others(nexus) {
                    fx.attentions.push((n, asc::RESERVATIONS_PREEMPTED));
                }
                self.regs.clear();
                self.res = None;
                self.generation = self.generation.wrapping_add(1);
                Ok(fx)
            }
            out_sa::PREEMPT | out_sa::PREEMPT_AND_ABORT => {
                let kind = self.check_key(mine, p, type_code)?;
                let abort = sa == out_sa::PREEMPT_AND_ABORT;
                let victims = |s: &PrState, key: u64| -> Vec<Nexus> {
                    s.regs
                        .iter()
                        .filter(|r| r.key == key && &r.nexus != nexus)
                        .map(|r| r.nexus.clone())
                        .collect()
                };
                let preempted: Vec<Nexus> = match self.res.clone() {
                    Some(res) if res.kind.all_registrants() && p.sa_key == 0 => {
                        let v = self.others(nexus);
                        self.res = Some(Reservation {
                            holder: nexus.clone(),
                            kind,
                        });
                        v
                    }
                    Some(res) if !res.kind.all_registrants() && self.key_of(&res.holder) == Some(p.sa_key) => {
                        let v = victims(self, p.sa_key);
                        self.res = Some(Reservation {
                            holder: nexus.clone(),
                            kind,
                        });
                        // Registrants that stay learn that the reservation changed hands.
                        if res.kind != kind {
                            for n in self.others(nexus).into_iter().filter(|n| !v.contains(n)) {
                                fx.attentions.push((n, asc::RESERVATIONS_RELEASED));
                            }
                        }
                        v
                    }
                    _ => {
                        if p.sa_key == 0 {
                            return Err(PrError::Check(Sense::invalid_param(8, None)));
                        }
                        let v = victims(self, p.sa_key);
                        let own_key_matches = mine == Some(p.sa_key);
                        if v.is_empty() && !own_key_matches {
                            return Err(PrError::Conflict);
                        }
                        v
                    }
                };
                self.regs.retain(|r| !preempted.contains(&r.nexus));
                if self.regs.is_empty() {
                    self.res = None;
                }
                for n in &preempted {
                    fx.attentions.push((n.clone(), asc::REGISTRATIONS_PREEMPTED));
                }
                if abort {
                    fx.aborted = preempted;
                }
                self.generation = self.generation.wrapping_add(1);
                Ok(fx)
            }
            _ => Err(PrError::Check(Sense::invalid_cdb(1, Some(4)))),
        }
    }

    fn check_key(&self, mine: Option<u64>, p: &OutParams, type_code: u8) -> Result<PrType, PrError> {
        if mine != Some(p.key) {
            return Err(PrError::Conflict);
        }
        PrType::from_code(type_code).ok_or(PrError::Check(Sense::invalid_cdb(2, Some(3))))
    }

    /// PERSISTENT RESERVE IN, READ KEYS.
    pub fn read_keys(&self) -> Vec<u8> {
        let mut d = Vec::with_capacity(8 + 8 * self.regs.len());
        d.extend_from_slice(&self.generation.to_be_bytes());
        d.extend_from_slice(&((self.regs.len() * 8) as u32).to_be_bytes());
        for r in &self.regs {
            d.extend_from_slice(&r.key.to_be_bytes());
        }
        d
    }

    /// PERSISTENT RESERVE IN, READ RESERVATION.
    pub fn read_reservation(&self) -> Vec<u8> {
        let mut d = Vec::with_capacity(24);
        d.extend_from_slice(&self.generation.to_be_bytes());
        match &self.res {
            None => d.extend_from_slice(&0u32.to_be_bytes()),
            Some(res) => {
                d.extend_from_slice(&16u32.to_be_bytes());
                let key = if res.kind.all_registrants() {
                    0
                } else {
                    self.key_of(&res.holder).unwrap_or(0)
                };
                d.extend_from_slice(&key.to_be_bytes());
                d.extend_from_slice(&[0, 0, 0, 0, 0, res.kind as u8, 0, 0]);
            }
        }
        d
    }

    /// PERSISTENT RESERVE IN, REPORT CAPABILITIES.
    pub fn report_capabilities(&self) -> Vec<u8> {
        // CRH (reserve/release handled as in SPC-4 5.12.3), PTPL_C; TMV with every type.
        let mut d = vec![0, 8, 0x10 | 0x01, 0x80, 0, 0, 0, 0];
        if self.aptpl {
            d[3] |= 0x01;
        }
        d[4] = 0x80 | 0x40 | 0x20 | 0x08 | 0x02;
        d[5] = 0x01;
        d
    }

    /// PERSISTENT RESERVE IN, READ FULL STATUS (iSCSI TransportIDs with the ISID).
    pub fn read_full_status(&self) -> Vec<u8> {
        let mut body = Vec::new();
        for r in &self.regs {
            let holder = self.is_holder(&r.nexus);
            body.extend_from_slice(&r.key.to_be_bytes());
            body.extend_from_slice(&[0, 0, 0, 0]);
            body.push(if holder { 0x01 } else { 0 });
            body.push(match (&self.res, holder) {
                (Some(res), true) => res.kind as u8,
                _ => 0,
            });
            body.extend_from_slice(&[0, 0, 0, 0]);
            // RELATIVE TARGET PORT IDENTIFIER: the one port VPD 0x83 reports.
            body.extend_from_slice(&1u16.to_be_bytes());
            let tid = transport_id(&r.nexus);
            body.extend_from_slice(&(tid.len() as u32).to_be_bytes());
            body.extend_from_slice(&tid);
        }
        let mut d = Vec::with_capacity(8 + body.len());
        d.extend_from_slice(&self.generation.to_be_bytes());
        d.extend_from_slice(&(body.len() as u32).to_be_bytes());
        d.extend_from_slice(&body);
        d
    }
}

/// The iSCSI TransportID of an initiator port (SPC-4 7.6.4.6, format 01b).
pub fn transport_id(n: &Nexus) -> Vec<u8> {
    let mut name = n.initiator_port().into_bytes();
    name.push(0);
    while !name.len().is_multiple_of(4) || name.len() < 20 {
        name.push(0);
    }
    let mut t = vec![0x40 | 0x05, 0];
    t.extend_from_slice(&(name.len() as u16).to_be_bytes());
    t.extend_from_slice(&name);
    t
}

/// Magic of the APTPL file: "HBPR" read as a little-endian u32.
pub const APTPL_MAGIC: u32 = u32::from_le_bytes(*b"HBPR");
pub const APTPL_VERSION: u16 = 1;
/// Registrations an APTPL file may hold (bounds what a corrupt file can make us allocate).
pub const APTPL_MAX_REGS: usize = 4096;

impl PrState {
    /// The APTPL file: little-endian, CRC32C over everything before the trailing CRC.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&APTPL_MAGIC.to_le_bytes());
        b.extend_from_slice(&APTPL_VERSION.to_le_bytes());
        b.extend_from_slice(&(self.aptpl as u16).to_le_bytes());
        b.extend_from_slice(&self.generation.to_le_bytes());
        let (kind, holder) = match &self.res {
            // Under the all-registrants types the reserving nexus may have left; any
            // registrant stands for the holder then.
            Some(r) => (
                r.kind as u8,
                self.regs
                    .iter()
                    .position(|x| x.nexus == r.holder)
                    .or_else(|| (r.kind.all_registrants() && !self.regs.is_empty()).then_some(0))
                    .map(|i| i as u32)
                    .unwrap_or(u32::MAX),
            ),
            None => (0, u32::MAX),
        };
        b.push(kind);
        b.extend_from_slice(&[0, 0, 0]);
        b.extend_from_slice(&holder.to_le_bytes());
        b.extend_from_slice(&(self.regs.len() as u32).to_le_bytes());
        for r in &self.regs {
            b.extend_from_slice(&r.key.to_le_bytes());
            b.extend_from_slice(&r.nexus.isid);
            b.extend_from_slice(&r.nexus.tpgt.to_le_bytes());
            let name = r.nexus.initiator_name.as_bytes();
            b.extend_from_slice(&(name.len() as u16).to_le_bytes());
            b.extend_from_slice(name);
        }
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    /// Reads an APTPL file; any damage is an error that says what is wrong.
    pub fn decode(b: &[u8]) -> Result<PrState, String> {
        if b.len() < 28 {
            return Err(format!("APTPL file too short ({} bytes)", b.len()));
        }
        let (body, tail) = b.split_at(b.len() - 4);
        let want = u32::from_le_bytes(tail.try_into().expect("4 bytes"));
        if crc32c::crc32c(body) != want {
            return Err("APTPL file checksum mismatch".into());
        }
        let mut r = Reader { b: body, at: 0 };
        if r.u32()? != APTPL_MAGIC {
            return Err("not an APTPL file (bad magic)".into());
        }
        let version = r.u16()?;
        if version != APTPL_VERSION {
            return Err(format!(
                "APTPL file version {version} is not supported (want {APTPL_VERSION})"
            ));
        }
        let aptpl = r.u16()? & 1 == 1;
        let generation = r.u32()?;
        let kind = r.take(4)?[0];
        let holder = r.u32()?;
        let count = r.u32()? as usize;
        if count > APTPL_MAX_REGS {
            return Err(format!("APTPL file claims {count} registrations"));
        }
        let mut regs = Vec::with_capacity(count);
        for _ in 0..count {
            let key = r.u64()?;
            let isid: [u8; 6] = r.take(6)?.try_into().expect("6 bytes");
            let tpgt = r.u16()?;
            let len = r.u16()? as usize;
            let name = std::str::from_utf8(r.take(len)?).map_err(|_| "APTPL initiator name is not UTF-8")?;
            regs.push(Registration {
                nexus: Nexus {
                    initiator_name: name.to_string(),
                    isid,
                    tpgt,
                },
                key,
            });
        }
        if r.at != body.len() {
            return Err("APTPL file has trailing bytes".into());
        }
        let res = match kind {
            0 => None,
            k => {
                let kind = PrType::from_code(k).ok_or(format!("APTPL reservation type {k} is unknown"))?;
                let holder = regs
                    .get(holder as usize)
                    .ok_or("APTPL reservation holder is not registered")?
                    .nexus
                    .clone();
                Some(Reservation { holder, kind })
            }
        };
        Ok(PrState {
            generation,
            regs,
            res,
            aptpl,
        })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or("APTPL file truncated")?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, String> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
}
