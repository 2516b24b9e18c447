/**
 * `tessera/data`: datasets and batches. A dataset is an immutable value (a count, an image shape
 * and `get(i)`, images in [-1, 1]); subsets, seeded limits and x-flips are new datasets over the same
 * pixels; `batches` is an endless, seeded stream whose `position` resumes it exactly.
 *
 * @module tessera/data
 */
export { pixelDataset, subsetDataset, limitDataset, xflipDataset, type Dataset, type PixelSource } from './dataset.ts';
export { batches, takeBatch, sampleIndex, type Batch, type BatchOptions } from './batches.ts';
export { loadMnist, type MnistName, type MnistOptions } from './mnist.ts';
export { openImageFolder, type ImageFolderDataset, type ImageFolderOptions, type SkippedImage } from './imageFolder.ts';
export { decodeImage, type DecodedImage } from './decodeImage.ts';
export { cropResize, centerCrop } from './resize.ts';
export { DataError } from '../errors.ts';
