//! Mode pages (SPC-4 7.5, SBC-3 6.4): caching, control, disconnect-reconnect and
//! informational exceptions, with their changeable masks.

/// Page codes served.
pub const DISCONNECT_RECONNECT: u8 = 0x02;
pub const CACHING: u8 = 0x08;
pub const CONTROL: u8 = 0x0a;
pub const INFORMATIONAL_EXCEPTIONS: u8 = 0x1c;
pub const ALL_PAGES: u8 = 0x3f;

/// Pages in the order MODE SENSE returns them for "all pages".
pub const PAGES: [u8; 4] = [DISCONNECT_RECONNECT, CACHING, CONTROL, INFORMATIONAL_EXCEPTIONS];

/// The fields MODE SELECT may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModeState {
    /// Write cache enabled (caching page WCE): when off, every write is FUA.
    pub wce: bool,
    /// Descriptor format sense data (control page D_SENSE).
    pub d_sense: bool,
    /// Software write protect (control page SWP): the medium refuses writes.
    pub swp: bool,
}

/// Page control field of MODE SENSE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageControl {
    Current,
    Changeable,
    Default,
}

/// The page `code` (subpage 0) as MODE SENSE returns it; `None` if not served.
pub fn page(code: u8, pc: PageControl, cur: ModeState, dflt: ModeState) -> Option<Vec<u8>> {
    let st = match pc {
        PageControl::Current => Some(cur),
        PageControl::Default => Some(dflt),
        PageControl::Changeable => None,
    };
    let mut p = match code {
        DISCONNECT_RECONNECT => vec![0u8; 16],
        CACHING => vec![0u8; 20],
        CONTROL => vec![0u8; 12],
        INFORMATIONAL_EXCEPTIONS => vec![0u8; 12],
        _ => return None,
    };
    p[0] = code;
    p[1] = (p.len() - 2) as u8;
    match (code, st) {
        (CACHING, Some(s)) => p[2] = if s.wce { 0x04 } else { 0 },
        (CACHING, None) => p[2] = 0x04,
        (CONTROL, Some(s)) => {
            p[2] = if s.d_sense { 0x04 } else { 0 };
            p[4] = if s.swp { 0x08 } else { 0 };
            // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering allowed.
            p[3] = 0x10;
            // BUSY TIMEOUT PERIOD: unlimited.
            p[8] = 0xff;
            p[9] = 0xff;
        }
        (CONTROL, None) => {
            p[2] = 0x04;
            p[4] = 0x08;
        }
        (INFORMATIONAL_EXCEPTIONS, Some(_)) => p[2] = 0x08, // DEXCPT: no exception reporting
        _ => {}
    }
    Some(p)
}

/// Applies a page from MODE SELECT. `Err(i)` names the byte of the page that tries to
/// change something not changeable (or has a wrong length, byte 1).
pub fn select(new: &[u8], cur: ModeState) -> Result<ModeState, usize> {
    let code = new[0] & 0x3f;
    let now = page(code, PageControl::Current, cur, cur).ok_or(0usize)?;
    let mask = page(code, PageControl::Changeable, cur, cur).ok_or(0usize)?;
    if new.len() != now.len() || new[1] != now[1] {
        return Err(1);
    }
    for i in 2..now.len() {
        if (new[i] ^ now[i]) & !mask[i] != 0 {
            return Err(i);
        }
    }
    let mut out = cur;
    match code {
        CACHING => out.wce = new[2] & 0x04 != 0,
        CONTROL => {
            out.d_sense = new[2] & 0x04 != 0;
            out.swp = new[4] & 0x08 != 0;
        }
        _ => {}
    }
    Ok(out)
}
