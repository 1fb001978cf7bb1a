/// The decisions of an encoded transfer's negotiation (``EncodedObjectOffer``, ``EncodedObjectReply``,
/// ``EncodedObjectQuery``), sans-IO: the sending and receiving shells read files and stores and act on them.
public enum EncodedTransferPlan {
    /// The earlier images worth naming in an offer as baselines: those with non-zero pages equal to the
    /// image's at the same addresses, most such pages first, at most ``EncodedObjectOffer/maximumBaselines``.
    /// - Parameters:
    ///   - pageKeys: The image's page keys (nil for zero pages).
    ///   - manifests: The images the sending node keeps.
    public static func baselineCandidates(for pageKeys: [ChunkKey?], among manifests: [ImageManifest])
        -> [ImageManifest]
    {
        Array(
            manifests.map { ($0, $0.similarity(to: pageKeys)) }
                .filter { $0.1 > 0 }
                .sorted { $0.1 > $1.1 }
                .map(\.0)
                .prefix(EncodedObjectOffer.maximumBaselines))
    }

    /// The receiver's reply to `offer`: the first offered baseline it can rebuild becomes the baseline, and
    /// it asks the page query only when its store holds anything (an empty store could only say no).
    /// - Parameters:
    ///   - offer: The sender's offer.
    ///   - hasStore: Whether the receiver keeps a chunk store.
    ///   - storeIsEmpty: Whether that store holds no chunk.
    ///   - rebuild: Rebuilds an offered image from the receiver's store, or nil if it cannot; called in
    ///     the offer's order until one succeeds.
    /// - Returns: The reply and the rebuilt baseline, if any.
    public static func reply<Baseline>(
        to offer: EncodedObjectOffer, hasStore: Bool, storeIsEmpty: Bool, rebuild: (ChunkIdentity) -> Baseline?
    ) -> (reply: EncodedObjectReply, baseline: Baseline?) {
        var chosen: (index: Int, baseline: Baseline)?
        if hasStore {
            for (index, identity) in offer.baselines.enumerated() {
                if let baseline = rebuild(identity) {
                    chosen = (index, baseline)
                    break
                }
            }
        }
        let reply = EncodedObjectReply(
            hasStore: hasStore, wantsQuery: hasStore && !storeIsEmpty, baseline: chosen?.index)
        return (reply, chosen?.baseline)
    }

    /// The pages a sender asks the receiver's store about: the distinct keys of its non-zero pages that are
    /// not unchanged since the baseline (those go as `unchanged` records), in page order, at most
    /// ``EncodedObjectQuery/maximumPrefixes``.
    /// - Parameters:
    ///   - pageKeys: The image's page keys (nil for zero pages).
    ///   - baseline: The baseline's page keys (empty without one).
    public static func queryKeys(pageKeys: [ChunkKey?], baseline: [ChunkKey?]) -> [ChunkKey] {
        var seen = Set<ChunkKey>()
        var asked: [ChunkKey] = []
        for (index, key) in pageKeys.enumerated() where asked.count < EncodedObjectQuery.maximumPrefixes {
            guard let key, index >= baseline.count || baseline[index] != key else { continue }
            if seen.insert(key).inserted { asked.append(key) }
        }
        return asked
    }
}
