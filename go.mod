module upsize

go 1.26.8

require github.com/h2non/bimg v1.1.9
