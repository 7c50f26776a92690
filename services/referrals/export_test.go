package referrals

// SetExpireBatch sets how many holds a sweep expires in one transaction,
// so that a test can make a backlog span several.
func (s *Server) SetExpireBatch(n int) { s.expireBatch = n }

// DaysBetween is daysBetween, for the tests of how days are counted.
var DaysBetween = daysBetween

// AfterStored runs f as a handler has found no stored answer for its
// request id, so that a test can commit the first call just then.
func (s *Server) AfterStored(f func(method string)) { s.afterStored = f }
