//! A client of BIRD's control socket (the protocol `birdc` speaks): one command at a time, the
//! reply read up to its final line. Reply lines are `NNNN-text` (more follows), ` text` (more of
//! the same code) and `NNNN text` (the last line); codes 0xxx are success, 1xxx tables,
//! 8xxx and 9xxx errors. Used for `configure check`, `configure` and the session states.

use std::{path::Path, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::UnixStream,
};

/// Longest reply accepted (a `show protocols all` of many peers is a few hundred KiB).
const MAX_REPLY: usize = 8 << 20;

/// Errors talking to BIRD.
#[derive(Debug, thiserror::Error)]
pub enum BirdError {
    /// The socket cannot be reached or broke.
    #[error("BIRD's control socket {path}: {reason}")]
    Socket {
        /// The socket.
        path: String,
        /// Why.
        reason: String,
    },
    /// BIRD answered with an error code.
    #[error("BIRD refused `{command}`: {message}")]
    Refused {
        /// The command.
        command: String,
        /// BIRD's message.
        message: String,
    },
    /// The reply is not in BIRD's format.
    #[error("BIRD's reply to `{command}` is malformed: {detail}")]
    Malformed {
        /// The command.
        command: String,
        /// What was wrong.
        detail: String,
    },
}

/// One line of a reply: its code and text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyLine {
    /// The code (continuation lines carry the code of the line before).
    pub code: u16,
    /// The text.
    pub text: String,
}

/// A connection to BIRD.
#[derive(Debug)]
pub struct Bird {
    path: String,
    stream: BufReader<UnixStream>,
    timeout: Duration,
}

/// Parses one reply line; `last` is the code of the line before. Returns the line and whether
/// it ends the reply.
///
/// # Errors
///
/// A description of the malformed line.
pub fn parse_line(line: &str, last: Option<u16>) -> Result<(ReplyLine, bool), String> {
    let line = line.trim_end_matches(['\n', '\r']);
    if let Some(rest) = line.strip_prefix(' ') {
        let code = last.ok_or_else(|| format!("a continuation line before any code: {line:?}"))?;
        return Ok((ReplyLine { code, text: rest.to_owned() }, false));
    }
    let (head, text) = (line.get(..4), line.get(5..).unwrap_or(""));
    let code = head
        .filter(|h| h.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|h| h.parse::<u16>().ok())
        .ok_or_else(|| format!("no reply code: {line:?}"))?;
    match line.as_bytes().get(4) {
        Some(b'-') => Ok((ReplyLine { code, text: text.to_owned() }, false)),
        Some(b' ') | None => Ok((ReplyLine { code, text: text.to_owned() }, true)),
        Some(_) => Err(format!("no separator after the code: {line:?}")),
    }
}

impl Bird {
    /// Connects to the socket at `path` and reads BIRD's greeting.
    ///
    /// # Errors
    ///
    /// [`BirdError::Socket`] when the socket cannot be reached in `timeout` or does not greet.
    pub async fn connect(path: &Path, timeout: Duration) -> Result<Self, BirdError> {
        let shown = path.display().to_string();
        let socket_err = |reason: String| BirdError::Socket { path: shown.clone(), reason };
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| socket_err(format!("no answer in {timeout:?}")))?
            .map_err(|e| socket_err(format!("{e} (is the BIRD container running?)")))?;
        let mut bird = Self { path: shown.clone(), stream: BufReader::new(stream), timeout };
        let greeting = bird.read_reply("(greeting)").await?;
        if !greeting.iter().any(|l| l.code == 1 && l.text.contains("BIRD")) {
            return Err(socket_err(format!("not BIRD's greeting: {greeting:?}")));
        }
        Ok(bird)
    }

    async fn read_reply(&mut self, command: &str) -> Result<Vec<ReplyLine>, BirdError> {
        let mut lines = Vec::new();
        let mut size = 0usize;
        let mut last = None;
        let deadline = tokio::time::Instant::now() + self.timeout;
        loop {
            let mut buf = String::new();
            let n = tokio::time::timeout_at(deadline, self.stream.read_line(&mut buf))
                .await
                .map_err(|_| BirdError::Socket {
                    path: self.path.clone(),
                    reason: format!("no reply to `{command}` in {:?}", self.timeout),
                })?
                .map_err(|e| BirdError::Socket { path: self.path.clone(), reason: e.to_string() })?;
            if n == 0 {
                return Err(BirdError::Socket {
                    path: self.path.clone(),
                    reason: format!("closed while answering `{command}`"),
                });
            }
            size += n;
            if size > MAX_REPLY {
                return Err(BirdError::Malformed {
                    command: command.to_owned(),
                    detail: "reply longer than 8 MiB".into(),
                });
            }
            let (line, end) = parse_line(&buf, last)
                .map_err(|detail| BirdError::Malformed { command: command.to_owned(), detail })?;
            last = Some(line.code);
            lines.push(line);
            if end {
                return Ok(lines);
            }
        }
    }

    /// Runs `command`; its reply, or [`BirdError::Refused`] when BIRD answers 8xxx/9xxx.
    ///
    /// # Errors
    ///
    /// Socket errors, a refusal, a malformed reply.
    pub async fn command(&mut self, command: &str) -> Result<Vec<ReplyLine>, BirdError> {
        if command.contains('\n') {
            return Err(BirdError::Malformed { command: command.to_owned(), detail: "a command is one line".into() });
        }
        let socket_err = |e: std::io::Error| BirdError::Socket { path: self.path.clone(), reason: e.to_string() };
        let write = async {
            self.stream.get_mut().write_all(format!("{command}\n").as_bytes()).await?;
            self.stream.get_mut().flush().await
        };
        tokio::time::timeout(self.timeout, write)
            .await
            .map_err(|_| BirdError::Socket { path: self.path.clone(), reason: "write timed out".into() })?
            .map_err(socket_err)?;
        let reply = self.read_reply(command).await?;
        if let Some(err) = reply.iter().find(|l| l.code >= 8000) {
            return Err(BirdError::Refused { command: command.to_owned(), message: err.text.clone() });
        }
        Ok(reply)
    }

    /// `configure check "<file>"`: whether BIRD would accept `file`.
    ///
    /// # Errors
    ///
    /// [`BirdError::Refused`] with BIRD's message (file, line, column and what is wrong).
    pub async fn check(&mut self, file: &Path) -> Result<(), BirdError> {
        self.command(&format!("configure check \"{}\"", file.display())).await.map(drop)
    }

    /// `configure "<file>"`: BIRD loads `file`.
    ///
    /// # Errors
    ///
    /// [`BirdError::Refused`] with BIRD's message.
    pub async fn configure(&mut self, file: &Path) -> Result<(), BirdError> {
        self.command(&format!("configure \"{}\"", file.display())).await.map(drop)
    }

    /// The BGP sessions: `show protocols all`, reduced to each BGP protocol's state and
    /// exported route count.
    ///
    /// # Errors
    ///
    /// Socket errors, a refusal, a malformed reply.
    pub async fn sessions(&mut self) -> Result<Vec<Session>, BirdError> {
        let reply = self.command("show protocols all").await?;
        Ok(parse_sessions(&reply))
    }
}

/// A BGP session as BIRD shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Session {
    /// The protocol's name (the BGPPeer's name).
    pub name: String,
    /// The BGP state (`Established`, `Active`, `Connect`, `Idle`, `OpenSent`, ...), or the
    /// protocol's state when BIRD shows none (`down`).
    pub state: String,
    /// BIRD's detail, e.g. `Socket: Connection refused` or the last error.
    pub info: String,
    /// Routes exported over the session (all channels).
    pub exported: u64,
}

impl Session {
    /// Whether the session is up.
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.state == "Established"
    }
}

/// Reduces a `show protocols all` reply to the BGP sessions.
#[must_use]
pub fn parse_sessions(reply: &[ReplyLine]) -> Vec<Session> {
    let mut sessions: Vec<Session> = Vec::new();
    let mut in_bgp = false;
    for line in reply {
        match line.code {
            // One line per protocol: name, protocol, table, state, since (date and/or time), info.
            1002 => {
                let fields: Vec<&str> = line.text.split_whitespace().collect();
                in_bgp = fields.get(1) == Some(&"BGP");
                if !in_bgp {
                    continue;
                }
                let proto_state = fields.get(3).copied().unwrap_or("down");
                // "Since" is a time, or a date and a time; the info follows it.
                let rest: Vec<&str> = fields
                    .iter()
                    .skip(4)
                    .copied()
                    .skip_while(|f| f.contains(':') || f.contains('-') && f.len() == 10)
                    .collect();
                let state = rest.first().map_or(proto_state, |s| s).to_owned();
                let info = rest.iter().skip(1).copied().collect::<Vec<_>>().join(" ");
                sessions.push(Session { name: fields[0].to_owned(), state, info, exported: 0 });
            }
            1006 if in_bgp => {
                let t = line.text.trim();
                if let Some(routes) = t.strip_prefix("Routes:")
                    && let Some(session) = sessions.last_mut()
                {
                    // "0 imported, 1 exported, 0 preferred" (BIRD 2.0) or with "filtered".
                    for part in routes.split(',') {
                        let mut words = part.split_whitespace();
                        if let (Some(n), Some("exported")) = (words.next(), words.next()) {
                            session.exported += n.parse::<u64>().unwrap_or(0);
                        }
                    }
                }
                if let Some(err) = t.strip_prefix("Last error:")
                    && let Some(session) = sessions.last_mut()
                    && session.info.is_empty()
                {
                    session.info = err.trim().to_owned();
                }
            }
            _ => {}
        }
    }
    sessions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(text: &str) -> Vec<ReplyLine> {
        let mut last = None;
        let mut out = Vec::new();
        for l in text.lines() {
            let (line, _) = parse_line(l, last).unwrap();
            last = Some(line.code);
            out.push(line);
        }
        out
    }

    #[test]
    fn lines_are_parsed_with_their_codes() {
        assert_eq!(
            parse_line("0001 BIRD 2.0.12 ready.\n", None).unwrap(),
            (ReplyLine { code: 1, text: "BIRD 2.0.12 ready.".into() }, true)
        );
        assert!(!parse_line("0002-Reading", None).unwrap().1);
        assert_eq!(parse_line(" more", Some(1002)).unwrap().0.code, 1002);
        assert_eq!(parse_line("0000", None).unwrap(), (ReplyLine { code: 0, text: String::new() }, true));
        for bad in ["", "abcd text", "12", "0001xtext"] {
            assert!(parse_line(bad, None).is_err(), "{bad:?}");
        }
        assert!(parse_line(" orphan", None).is_err());
    }

    /// A reply recorded from BIRD 2.0.12 (one session up, one refused, one administratively down).
    const SHOW_PROTOCOLS_ALL: &str = "2002-Name       Proto      Table      State  Since         Info
1002-purelb_device Device     ---        up     05:32:26.668  
 
1002-purelb_direct Direct     ---        up     05:32:26.668  
1006-  Channel ipv4
     State:          UP
     Routes:         1 imported, 0 exported, 1 preferred
 
1002-tor-a      BGP        ---        up     05:32:27.657  Established   
1006-  BGP state:          Established
     Neighbor address: 198.51.100.1
   Channel ipv4
     State:          UP
     Routes:         0 imported, 3 exported, 0 preferred
   Channel ipv6
     Routes:         0 imported, 2 exported, 0 preferred
 
1002-tor-b      BGP        ---        start  2026-12-03 05:33:01  Active        Socket: Connection refused
1006-  BGP state:          Active
     Last error:       Socket: Connection refused
   Channel ipv4
     Routes:         0 imported, 0 exported, 0 preferred
 
1002-tor-c      BGP        ---        down   05:40:00.000  
1006-  BGP state:          Down
     Last error:       Shutdown
 
0000 
";

    #[test]
    fn sessions_have_their_state_info_and_exported_routes() {
        let sessions = parse_sessions(&reply(SHOW_PROTOCOLS_ALL));
        assert_eq!(
            sessions,
            vec![
                Session { name: "tor-a".into(), state: "Established".into(), info: String::new(), exported: 5 },
                Session {
                    name: "tor-b".into(),
                    state: "Active".into(),
                    info: "Socket: Connection refused".into(),
                    exported: 0
                },
                Session { name: "tor-c".into(), state: "down".into(), info: "Shutdown".into(), exported: 0 },
            ]
        );
        assert!(sessions[0].is_up() && !sessions[1].is_up());
    }

    /// Against a fake BIRD on a Unix socket: the greeting, a refused `configure check`, a
    /// reply split over many lines, and a server that stops answering.
    #[tokio::test]
    async fn talks_to_a_bird_shaped_server() {
        use tokio::io::AsyncReadExt as _;
        let dir = std::env::temp_dir().join(format!("purelb-birdc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("bird.ctl");
        let _ = std::fs::remove_file(&path);
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"0001 BIRD 2.0.12 ready.\n").await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            assert!(String::from_utf8_lossy(&buf[..n]).starts_with("configure check \""));
            s.write_all(b"0002-Reading configuration from /x\n8002 /x:2:18 syntax error\n").await.unwrap();
            let _ = s.read(&mut buf).await.unwrap();
            s.write_all(SHOW_PROTOCOLS_ALL.as_bytes()).await.unwrap();
            let _ = s.read(&mut buf).await.unwrap();
            // No answer to the third command.
            tokio::time::sleep(Duration::from_secs(5)).await;
        });
        let mut bird = Bird::connect(&path, Duration::from_secs(1)).await.unwrap();
        let err = bird.check(Path::new("/x")).await.unwrap_err();
        assert!(matches!(&err, BirdError::Refused { message, .. } if message.contains("syntax error")), "{err}");
        assert_eq!(bird.sessions().await.unwrap().len(), 3);
        let err = bird.command("show status").await.unwrap_err();
        assert!(err.to_string().contains("no reply to `show status`"), "{err}");
        assert!(bird.command("a\nb").await.is_err());
        server.abort();
        let missing = Bird::connect(&dir.join("none.ctl"), Duration::from_secs(1)).await.unwrap_err();
        assert!(missing.to_string().contains("is the BIRD container running"), "{missing}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
