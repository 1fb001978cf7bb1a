/// The random loss decision of one direction: Bernoulli or a Gilbert–Elliott chain, on its own seeded generator.
struct LossProcess: Sendable {
    private enum Kind: Sendable {
        case none
        case bernoulli(threshold: UInt64)
        case gilbertElliott(goodToBad: UInt64, badToGood: UInt64)
    }

    private let kind: Kind
    private var random: Xoshiro256StarStar
    private var isInBadState: Bool

    init(model: LossModel, seed: UInt64) {
        random = Xoshiro256StarStar(seed: seed)
        isInBadState = false
        switch model {
        case .none:
            kind = .none
        case .bernoulli(let probability):
            kind = probability > 0 ? .bernoulli(threshold: Xoshiro256StarStar.probabilityThreshold(probability)) : .none
        case .gilbertElliott(let averageLoss, let meanBurstLength):
            if averageLoss <= 0 {
                kind = .none
            } else {
                // Stationary bad-state share q / (q + r) = p with r = 1 / b gives q = p r / (1 - p).
                let badToGood = 1 / meanBurstLength
                let goodToBad = averageLoss * badToGood / (1 - averageLoss)
                kind = .gilbertElliott(
                    goodToBad: Xoshiro256StarStar.probabilityThreshold(goodToBad),
                    badToGood: Xoshiro256StarStar.probabilityThreshold(badToGood))
                // Start in the stationary distribution so short runs are unbiased.
                isInBadState = random.nextEvent(threshold: Xoshiro256StarStar.probabilityThreshold(averageLoss))
            }
        }
    }

    /// Decides whether the next packet is lost.
    mutating func shouldDrop() -> Bool {
        switch kind {
        case .none:
            return false
        case .bernoulli(let threshold):
            return random.nextEvent(threshold: threshold)
        case .gilbertElliott(let goodToBad, let badToGood):
            let isLost = isInBadState
            if isInBadState {
                if random.nextEvent(threshold: badToGood) { isInBadState = false }
            } else {
                if random.nextEvent(threshold: goodToBad) { isInBadState = true }
            }
            return isLost
        }
    }
}
