//go:build blob_clouds

package blob

import (
	_ "gocloud.dev/blob/azureblob" // azblob://container
	_ "gocloud.dev/blob/gcsblob"   // gs://bucket
)

// Google Cloud Storage and Azure Blob Storage double what a binary links (about 370 more packages:
// gRPC, the Google and Azure SDKs), so they are built in only with -tags blob_clouds.
func init() {
	genericSchemes["gs"] = true
	genericSchemes["azblob"] = true
}
