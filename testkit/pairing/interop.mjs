// Usage: node interop.mjs BASE_URL OTHER_TENANT_BASE_URL
// Runs the published @localfirst/relay client (package-lock.json pins it) against the relay's
// /pair endpoints, for testkit/tests/pairing.rs: alice and bob join one document id on the first
// base URL, are introduced, connect, and exchange a text and a binary message both ways; alice
// then closes her side and bob must see it close. carol joins the same document id on the second
// base URL (another tenant) and must never be introduced. Prints one JSON line per event and
// "PASS" or "FAIL: why"; exits 0 only on PASS. Everything is bounded by a 20 s deadline.
import { Client } from "@localfirst/relay/Client.js"

const [base, otherBase] = process.argv.slice(2)
if (!base || !otherBase) {
  console.error("usage: node interop.mjs BASE_URL OTHER_TENANT_BASE_URL")
  process.exit(2)
}
const doc = "doc-shared"
const log = (event, fields = {}) => console.log(JSON.stringify({ event, ...fields }))
const fail = why => {
  console.log(`FAIL: ${why}`)
  process.exit(1)
}
setTimeout(() => fail("deadline of 20 s passed"), 20000).unref()

const text = d => (typeof d === "string" ? `text:${d}` : `binary:${Buffer.from(d).toString()}`)

// Resolves with the first peer-connect event of `client`.
const connected = client =>
  new Promise(resolve => client.once("peer-connect", ev => resolve(ev)))

// Resolves with the next two messages on `socket`, as "text:…" / "binary:…".
const twoMessages = socket =>
  new Promise(resolve => {
    const got = []
    socket.addEventListener("message", ev => {
      got.push(text(ev.data))
      if (got.length === 2) resolve(got)
    })
  })

const carol = new Client({ peerId: "carol", url: otherBase, documentIds: [doc] })
carol.on("peer-connect", ({ peerId }) => fail(`carol (other tenant) was introduced to ${peerId}`))
const carolOnline = new Promise(resolve => carol.once("server-connect", resolve))

const alice = new Client({ peerId: "alice", url: base, documentIds: [doc] })
const bob = new Client({ peerId: "bob", url: base, documentIds: [doc] })
for (const c of [alice, bob, carol]) {
  c.on("error", e => log("client-error", { peer: c.peerId, error: String(e?.message ?? e) }))
}

const [a, b] = await Promise.all([connected(alice), connected(bob)])
log("peer-connect", { peer: "alice", with: a.peerId, documentId: a.documentId })
log("peer-connect", { peer: "bob", with: b.peerId, documentId: b.documentId })
if (a.peerId !== "bob" || b.peerId !== "alice") fail("introduced to the wrong peer")
if (a.documentId !== doc || b.documentId !== doc) fail("wrong document id")

// Alice may send before bob's connection reached the relay: the relay holds it for bob.
const atBob = twoMessages(b.socket)
const atAlice = twoMessages(a.socket)
a.socket.send("hello from alice")
a.socket.send(new TextEncoder().encode("bytes from alice"))
b.socket.send("hello from bob")
b.socket.send(new TextEncoder().encode("bytes from bob"))
const [bobGot, aliceGot] = await Promise.all([atBob, atAlice])
log("received", { peer: "bob", messages: bobGot })
log("received", { peer: "alice", messages: aliceGot })
const want = (got, exp) => JSON.stringify(got) === JSON.stringify(exp)
if (!want(bobGot, ["text:hello from alice", "binary:bytes from alice"]))
  fail(`bob got ${JSON.stringify(bobGot)}`)
if (!want(aliceGot, ["text:hello from bob", "binary:bytes from bob"]))
  fail(`alice got ${JSON.stringify(aliceGot)}`)

// Either side closing closes both.
const bobSawClose = new Promise(resolve => b.socket.addEventListener("close", ev => resolve(ev.code)))
alice.disconnectPeer("bob")
log("bob-socket-closed", { code: await bobSawClose })

// Carol had as long as all of the above, plus a second, to be (wrongly) introduced.
await carolOnline
await new Promise(resolve => setTimeout(resolve, 1000))
if (carol.peers.size !== 0) fail(`carol knows peers: ${[...carol.peers.keys()]}`)
log("carol-alone")
console.log("PASS")
process.exit(0)
